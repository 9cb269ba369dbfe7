"""The result objects lungct returns to a study: a Comprehensive SR (TID 1500 Measurement Report) and a
Secondary Capture of the Grad-CAM overlay on the slice that drove the decision, both built with highdicom.

Both carry the source study's patient and study modules (they belong to that study), new Series and SOP
Instance UIDs derived from the input and the model version (ids.derived_uid: the same input gives the same
objects), Manufacturer "lungct" and the model version as ManufacturerModelName. Concepts DICOM has no code
for (a class's probability, the study score, the decision) use the private coding scheme 99LUNGCT, declared
in the CodingSchemeIdentificationSequence as the standard asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from lungct import __version__
from lungct.inference.familiarity import is_familiar
from lungct.pacs.ids import derived_uid

SCHEME = "99LUNGCT"
MANUFACTURER = "lungct"
SR_SERIES_NUMBER, SC_SERIES_NUMBER = 9901, 9902  # high, so viewers list them after the acquired series
NOT_FOR_DIAGNOSIS = "lungct Grad-CAM overlay, derived; NOT FOR DIAGNOSTIC USE"


@dataclass(frozen=True)
class ModelInfo:
    """What made a result: the model version (run, backbone, weights hash) and the backbone's name."""

    version: str
    arch: str
    classes: tuple[str, ...]

    @property
    def model_name(self) -> str:
        return self.version[:64]  # ManufacturerModelName is LO (64 characters)

    @property
    def software_versions(self) -> str:
        return f"lungct {__version__}"


@dataclass
class StudyFinding:
    """The study-level result of one series, in the terms of lungct.inference.study.predict_series."""

    positive_class: str
    aggregate: str  # max, mean, topN
    score: float
    threshold: float
    threshold_source: str  # where the operating point comes from: the option, operating_points.json, default
    label: str  # the positive class, or "not <positive class>"
    driving: list[int]  # indices into the series' slices, highest score first
    probabilities: list[dict[str, float]]  # per slice, in slice order
    novelty: list[float] | None = None  # per slice, where the run has a familiarity reference (above 1: unfamiliar)


def _code(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value=value, scheme_designator=SCHEME, meaning=meaning[:64])


def probability_concept(classes: tuple[str, ...], name: str) -> CodedConcept:
    return _code(f"P{classes.index(name)}", f"Probability of {name}")


SCORE_CONCEPT = _code("SCORE", "Study score")
NOVELTY_CONCEPT = _code("NOVELTY", "Novelty against training images (above 1: unlike)")
UNFAMILIAR_CONCEPT = _code("UNFAMILIAR", "Slices unlike the training images")
DECISION_CONCEPT = _code("DECISION", "Decision at operating point")


def decision_concept(classes: tuple[str, ...], finding: StudyFinding) -> CodedConcept:
    k = classes.index(finding.positive_class)
    positive = finding.label == finding.positive_class
    return _code(f"C{k}" if positive else f"NOT-C{k}", finding.label)


def _coding_schemes() -> list:
    return [hd.coding_schemes.CodingSchemeIdentificationItem(SCHEME, name="lungct classifier concepts")]


def _algorithm(model: ModelInfo, finding: StudyFinding) -> hd.sr.AlgorithmIdentification:
    params = [
        f"positive class {finding.positive_class}",
        f"aggregate {finding.aggregate}",
        f"threshold {finding.threshold:g} ({finding.threshold_source})",
    ]
    return hd.sr.AlgorithmIdentification(
        name=f"lungct {model.arch}"[:64], version=model.version[:64], parameters=params, manufacturer=MANUFACTURER
    )


# The patient and general study attributes a result copies: Type 2 (present, possibly empty) in every image
# IOD, but a source may leave them out; the copy then carries them empty, as the standard allows.
_TYPE2_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "ReferringPhysicianName",
    "AccessionNumber",
)


def with_study_attributes(ds: Dataset) -> Dataset:
    """A copy of a source header with each Type 2 patient/study attribute present (empty when it was absent)."""
    out = Dataset()
    out.update(ds)
    if hasattr(ds, "file_meta"):
        out.file_meta = ds.file_meta
    for keyword in _TYPE2_STUDY:
        if keyword not in out:
            setattr(out, keyword, "")
    return out


def _ref(ds: Dataset) -> tuple[str, str]:
    return str(ds.SOPClassUID), str(ds.SOPInstanceUID)


def build_sr(
    sources: list[Dataset], finding: StudyFinding, model: ModelInfo, uid_seed: list[str]
) -> hd.sr.ComprehensiveSR:
    """The TID 1500 report: one study-level group (score, threshold, decision; the driving slices referenced)
    and one group per driving slice with every class's probability, that slice referenced as its source."""
    classes = model.classes
    sources = [with_study_attributes(ds) for ds in sources]
    algorithm = _algorithm(model, finding)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid("device", model.version),
            name="lungct",
            manufacturer_name=MANUFACTURER,
            model_name=model.model_name,
        ),
    )
    driving_refs = [hd.sr.SourceImageForMeasurement(*_ref(sources[i])) for i in finding.driving]
    no_units = codes.UCUM.NoUnits
    derivation = codes.SCT.Maximum if finding.aggregate == "max" else codes.SCT.Mean
    study_group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid("tracking", *uid_seed, "study"), identifier="lungct study result"
        ),
        algorithm_id=algorithm,
        finding_sites=[hd.sr.FindingSite(codes.SCT.Lung)],
        measurements=[
            hd.sr.Measurement(
                name=_code("SCORE", f"Study score ({finding.positive_class} probability)"),
                value=finding.score,
                unit=no_units,
                derivation=derivation,
                referenced_images=driving_refs,
                algorithm_id=algorithm,
            ),
            hd.sr.Measurement(name=codes.DCM.ThresholdValue, value=finding.threshold, unit=no_units),
            *(
                [
                    hd.sr.Measurement(
                        name=UNFAMILIAR_CONCEPT, value=sum(not is_familiar(n) for n in finding.novelty), unit=no_units
                    )
                ]
                if finding.novelty is not None
                else []
            ),
        ],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(DECISION_CONCEPT, decision_concept(classes, finding))],
    )
    slice_groups = []
    for rank, i in enumerate(finding.driving):
        slice_groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=derived_uid("tracking", *uid_seed, f"slice{i}"), identifier=f"lungct driving slice {rank + 1}"
                ),
                algorithm_id=algorithm,
                source_images=[hd.sr.SourceImageForMeasurementGroup(*_ref(sources[i]))],
                measurements=[
                    *(
                        hd.sr.Measurement(name=probability_concept(classes, c), value=p, unit=no_units)
                        for c, p in finding.probabilities[i].items()
                    ),
                    *(
                        [hd.sr.Measurement(name=NOVELTY_CONCEPT, value=finding.novelty[i], unit=no_units)]
                        if finding.novelty is not None
                        else []
                    ),
                ],
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=[study_group, *slice_groups],
        title=codes.DCM.ImagingMeasurementReport,
    )
    now = datetime.now()
    return hd.sr.ComprehensiveSR(
        evidence=sources,
        content=report,
        series_instance_uid=derived_uid("sr-series", *uid_seed),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=derived_uid("sr", *uid_seed),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,  # an AI result is not a verified report
        manufacturer_model_name=model.model_name,
        software_versions=model.software_versions,
        series_description="lungct AI result (not for diagnosis)",
        coding_schemes=_coding_schemes(),
        content_date=now.date(),
        content_time=now.time().replace(microsecond=0),
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )


def blend(image: Image.Image, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The slice in grey with the heatmap in the jet colour map over it, as an (H, W, 3) uint8 RGB array,
    with a one-line 'not for diagnosis' notice burned in at the top when the slice is wide enough."""
    from matplotlib import colormaps

    grey = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    heat = np.clip(np.asarray(heatmap, dtype=np.float32), 0, 1)
    if heat.shape != grey.shape:
        heat = np.asarray(Image.fromarray(heat, mode="F").resize(image.size, Image.BILINEAR))
    colour = colormaps["jet"](heat)[..., :3]
    rgb = (1 - alpha) * grey[..., None] + alpha * colour
    out = Image.fromarray(np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(out)
    text = "NOT FOR DIAGNOSIS"
    if draw.textlength(text) + 4 <= out.width:
        draw.rectangle((0, 0, draw.textlength(text) + 4, 12), fill=(0, 0, 0))
        draw.text((2, 1), text, fill=(255, 255, 0))
    return np.asarray(out)


def _patient_orientation(ds: Dataset) -> tuple[str, str]:
    """Row and column directions as patient-orientation letters, from ImageOrientationPatient (axial default)."""
    iop = ds.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return ("L", "P")
    letters = (("L", "R"), ("P", "A"), ("H", "F"))

    def letter(v: list[float]) -> str:
        axis = int(np.argmax(np.abs(v)))
        return letters[axis][0 if v[axis] > 0 else 1]

    values = [float(v) for v in iop]
    return (letter(values[:3]), letter(values[3:]))


def build_overlay(
    source: Dataset, rgb: np.ndarray, finding: StudyFinding, model: ModelInfo, uid_seed: list[str]
) -> hd.sc.SCImage:
    """The Grad-CAM overlay as a Secondary Capture in the source study: derived, referencing its slice,
    labelled not for diagnostic use."""
    source = with_study_attributes(source)
    spacing = source.get("PixelSpacing")
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=rgb,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=derived_uid("sc-series", *uid_seed),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=derived_uid("sc", *uid_seed),
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=_patient_orientation(source),
        pixel_spacing=tuple(float(v) for v in spacing) if spacing is not None and len(spacing) == 2 else None,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        manufacturer_model_name=model.model_name,
        software_versions=model.software_versions,
        series_description="lungct Grad-CAM (not for diagnosis)",
    )
    sc.ImageType = ["DERIVED", "SECONDARY"]
    # the body part decides whether Laterality is required (dciodvfy holds it): the source's, else the chest
    sc.BodyPartExamined = str(source.get("BodyPartExamined", "") or "CHEST")[:16]
    if source.get("Laterality"):
        sc.Laterality = source.Laterality
    sc.BurnedInAnnotation = "NO"  # the burned-in notice names no one
    sc.ImageComments = f"{NOT_FOR_DIAGNOSIS}; {finding.label}, score {finding.score:.4f}"[:10240]
    sc.DerivationDescription = f"Grad-CAM of class {finding.positive_class} by {model.model_name}"[:1024]
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = _ref(source)
    sc.SourceImageSequence = [ref]
    return sc
