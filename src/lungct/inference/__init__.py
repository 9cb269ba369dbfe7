"""Inference: a run's model applied to images (PyTorch or ONNX Runtime), calibrated, study-level results.

predictor     Predictor: paths or decoded images -> probabilities (and features), calibration applied
calibration   the calibrators a run stores (temperature, isotonic) and how they are loaded
onnx_runtime  the exported graphs (float, INT8), checked against the run before they are used
batching      MicroBatcher: concurrent single requests gathered into one model call
study         per-slice predictions of a DICOM series aggregated to one study result
service       InferenceService: the API's and the app's one path from upload bytes to Predictions,
              explanations and the prediction log, with one set of upload limits
"""

from lungct.inference.predictor import BACKENDS, Predictor, expand_paths, unfinished_run

__all__ = ["BACKENDS", "Predictor", "expand_paths", "unfinished_run"]
