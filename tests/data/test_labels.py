import pytest

from lungct.data.labels import normalise_label


@pytest.mark.parametrize(
    ("folder", "label"),
    [
        ("Bengin cases", "benign"),
        ("Malignant cases", "malignant"),
        ("Normal cases", "normal"),
        ("adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib", "adenocarcinoma"),
        ("large.cell.carcinoma_left.hilum_T2_N2_M0_IIIa", "large_cell_carcinoma"),
        ("large.cell.carcinoma", "large_cell_carcinoma"),
        ("squamous.cell.carcinoma_left.hilum_T1_N2_M0_IIIa", "squamous_cell_carcinoma"),
        ("Pneumonia", "pneumonia"),
        ("  NORMAL  ", "normal"),
    ],
)
def test_folder_names_normalise(folder, label):
    assert normalise_label(folder) == label


def test_alias_on_raw_name_wins_over_normalisation():
    assert normalise_label("Malignant cases", {"Malignant cases": "tumour"}) == "tumour"


def test_alias_on_normalised_name():
    assert normalise_label("COVID-19 cases", {"covid_19": "pneumonia"}) == "pneumonia"


def test_alias_overrides_builtin_spelling_fix():
    assert normalise_label("Bengin cases", {"bengin": "benign_nodule"}) == "benign_nodule"


def test_empty_label_is_an_error():
    with pytest.raises(ValueError):
        normalise_label("___")
