"""The Streamlit page (`lungct app` runs it): a thin layout of lungct.app.analysis and lungct.app.model_info.

Started as `streamlit run page.py -- --run RUN [--log LOG] [--eval DIR]`. Every failure the user can meet
is shown as a message in the page; nothing here should raise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from lungct.app.analysis import AppModel, analyse_upload, default_log_path, load_app_model, record_feedback
from lungct.app.model_info import card_rows, eval_info, history_info
from lungct.data.images import IMAGE_EXTENSIONS
from lungct.errors import LungCTError

CAUTION = (
    "**Decision support, not a diagnosis.** This model was trained on a small public data set and makes "
    "mistakes. Its output is a probability for each class, not a finding: a radiologist must read the scan, "
    "and no clinical decision should rest on this page."
)
# what lungct reads anywhere else (16-bit TIFF exports included, with --hu-offset); "dicom" is DICOM's other suffix
UPLOAD_TYPES = sorted({ext.lstrip(".") for ext in IMAGE_EXTENSIONS} | {"dicom"})


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lungct app", add_help=False)
    parser.add_argument("--run", default=None)
    parser.add_argument("--log", default=None)
    parser.add_argument("--eval", default=None)
    parser.add_argument("--hu-offset", type=int, default=None)
    args, _ = parser.parse_known_args(argv)
    return args


@st.cache_resource(show_spinner="Loading the model…")
def cached_model(run: str, log: str, hu_offset: int | None = None) -> AppModel:
    return load_app_model(run, log, hu_offset)


def probability_chart(probabilities: dict[str, float], predicted: str, calibrated: bool) -> alt.Chart:
    frame = pd.DataFrame({"class": list(probabilities), "probability": list(probabilities.values())})
    frame["predicted"] = frame["class"] == predicted
    return (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X(
                "probability:Q",
                scale=alt.Scale(domain=[0, 1]),
                title="calibrated probability" if calibrated else "probability",
            ),
            y=alt.Y("class:N", sort=None, title=None),
            color=alt.Color("predicted:N", legend=None, scale=alt.Scale(domain=[False, True], range=["#9aa", "#d33"])),
            tooltip=["class", alt.Tooltip("probability:Q", format=".3f")],
        )
        .properties(height=40 * len(frame) + 20)
    )


UNFAMILIAR = (
    "This image is unlike the CT slices the model was trained on (novelty {novelty:.1f}; above 1 is unfamiliar): "
    "a figure, a screenshot, another modality or another rendering. Its label means little."
)


def correct_this(model: AppModel, result: dict) -> None:
    """A clinician's correction of one slice's prediction, recorded in the prediction log."""
    key = result.get("prediction_id") or result["sha256"]
    with st.expander("Correct this"), st.form(f"feedback-{key}"):
        classes = model.classes
        label = st.selectbox("The right class", classes, index=classes.index(result["predicted"]))
        reason = st.text_input("Why (optional; no patient identifiers)", max_chars=500)
        if st.form_submit_button("Record"):
            ok, message = record_feedback(model, result.get("prediction_id"), label, reason)
            (st.success if ok else st.warning)(message)


def show_result(result: dict, calibrated: bool) -> None:
    st.subheader(result["name"])
    if "error" in result:
        st.error(result["error"])
        return
    if result.get("familiar") is False:
        st.warning(UNFAMILIAR.format(novelty=result["novelty"]))
    left, right = st.columns([2, 3])
    with left:
        st.markdown(f"Predicted class: **{result['predicted']}**")
        st.markdown(f"Probability: **{result['probability']:.2f}**")
        st.altair_chart(probability_chart(result["probabilities"], result["predicted"], calibrated), width="stretch")
        st.markdown(" · ".join(f"{c}: {p:.3f}" for c, p in result["probabilities"].items()))
        st.caption(
            (
                "Probabilities are calibrated on the run's validation part."
                if calibrated
                else "Probabilities are the model's softmax outputs; this run has no calibration (lungct calibrate)."
            )
            + f" {result['width']}x{result['height']} px, {result['latency_ms']:.0f} ms."
        )
    with right:
        st.image(result["overlay_png"], caption=f"Grad-CAM heatmap for {result['predicted']}")


def predict_tab(model: AppModel) -> None:
    if model.log_error:
        st.warning(f"Predictions are not being logged: {model.log_error}")
    uploads = st.file_uploader(
        "CT slices (PNG, JPEG, TIFF, BMP or DICOM)", type=UPLOAD_TYPES, accept_multiple_files=True, key="uploads"
    )
    if not uploads:
        st.info("Upload one or more CT slices to see the predicted class and where the model looked.")
        return
    # Streamlit reruns this script on every interaction: keep each upload's result, so it is predicted
    # (and logged) once.
    done: dict = st.session_state.setdefault("results", {})
    for upload in uploads:
        key = upload.file_id
        if key not in done:
            with st.spinner(f"Analysing {upload.name}…"):
                done[key] = analyse_upload(model, upload.getvalue(), upload.name)
        show_result(done[key], model.calibrated)
        if "error" not in done[key]:
            correct_this(model, done[key])
    current = {u.file_id for u in uploads}
    for key in list(done):
        if key not in current:
            del done[key]


def model_tab(run: Path, eval_dir: str | None) -> None:
    st.subheader("Model")
    try:
        st.dataframe(pd.DataFrame(card_rows(run)), hide_index=True)
    except LungCTError as exc:
        st.error(str(exc))
    st.subheader("Training curves")
    history = history_info(run)
    if history.curves_png:
        st.image(str(history.curves_png), caption="Accuracy and loss per epoch (curves.png)", width=800)
    elif history.rows:
        frame = pd.DataFrame(history.rows).set_index("step")
        left, right = st.columns(2)
        left.line_chart(frame[[c for c in ("train_accuracy", "val_accuracy") if c in frame]], x_label="epoch")
        right.line_chart(frame[[c for c in ("train_loss", "val_loss") if c in frame]], x_label="epoch")
    else:
        st.info(history.message)
    st.subheader("Test metrics")
    info = eval_info(run, eval_dir)
    if info.message:
        st.info(info.message)
    if info.metrics is None:
        return
    data = info.metrics.get("data", "")
    st.caption(f"n = {info.metrics.get('n', '?')} slices ({data}). {info.metrics.get('ci95_method', '')}")
    st.dataframe(pd.DataFrame(info.summary_rows), hide_index=True)
    if info.class_rows:
        st.dataframe(pd.DataFrame(info.class_rows), hide_index=True)
    left, right = st.columns(2)
    if info.confusion_png:
        left.image(str(info.confusion_png), caption="Confusion matrix (test part)")
    if info.roc_png:
        right.image(str(info.roc_png), caption="ROC curves, one class against the rest")


def main() -> None:
    st.set_page_config(page_title="lungct", layout="wide")
    st.title("lungct · lung CT slice classifier")
    st.warning(CAUTION)
    args = parse_args(sys.argv[1:])
    if not args.run:
        st.error("No run directory given: start the app with `lungct app --run RUN_DIR`.")
        st.stop()
    run = Path(args.run)
    try:
        model = cached_model(str(run), str(args.log or default_log_path(run)), args.hu_offset)
    except LungCTError as exc:
        st.error(f"The model cannot be loaded: {exc}")
        st.stop()
    predict, about = st.tabs(["Predict", "Model"])
    with predict:
        predict_tab(model)
    with about:
        model_tab(run, args.eval)


try:
    main()
except Exception as exc:  # last resort: a message in the page, never a traceback (st.stop is no Exception)
    st.error(f"Something went wrong: {type(exc).__name__}: {exc}")
