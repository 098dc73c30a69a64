"""Structure table, TotalSegmentator mapping (multi-label and folder) and the pairs CSV."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared_file

from TotalRegistratorLib.errors import InputError
from TotalRegistratorLib.io.labels import (
    SOURCE_TO_STRUCTURE,
    TOTALSEGMENTATOR_V2_IDS,
    PairRecord,
    read_pairs_csv,
    read_structures,
    structure_masks,
    write_pairs_csv,
)
from TotalRegistratorLib.registry import LABELS, REGIONS, TRAINING_STRUCTURES


def test_structure_table():
    assert len(LABELS) == 12 and sorted(LABELS.values()) == list(range(1, 13))
    assert len(TRAINING_STRUCTURES) == 11 and "prostate" not in TRAINING_STRUCTURES
    assert sorted(s for r in REGIONS.values() for s in r) == sorted(TRAINING_STRUCTURES)


def test_embedded_ids_match_totalsegmentator_class_map():
    class_map = json.loads(shared_file("totalsegmentator/class_map_total_v2.json").read_text())
    by_name = {name: int(i) for i, name in class_map.items()}
    assert all(by_name[name] == i for name, i in TOTALSEGMENTATOR_V2_IDS.items())
    merged = {name for name in by_name if name.startswith(("vertebrae_", "rib_", "lung_"))}
    assert merged <= set(TOTALSEGMENTATOR_V2_IDS), "every vertebra, rib and lobe is mapped"


def test_multilabel_mapping_merges_by_name():
    path = shared_file("totalsegmentator/example_seg.nii.gz")
    source = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    mapped = read_structures(path, "totalsegmentator")
    ours = sitk.GetArrayFromImage(mapped)
    assert ours.shape == source.shape and mapped.GetOrigin() == sitk.ReadImage(str(path)).GetOrigin()
    for structure in ("vertebrae", "ribs", "lung", "kidney", "liver", "heart"):
        ids = [i for n, i in TOTALSEGMENTATOR_V2_IDS.items() if SOURCE_TO_STRUCTURE[n] == structure]
        expected = int(np.isin(source, ids).sum())
        assert (ours == LABELS[structure]).sum() == expected, structure
    assert (ours == LABELS["vertebrae"]).any() and (ours == LABELS["ribs"]).any() and (ours == LABELS["lung"]).any()
    # ribs: ribs + costal cartilages (117); vertebrae L2..T10 here; bowel, vessels, muscles dropped
    assert (ours == LABELS["ribs"]).sum() == np.isin(source, [*range(92, 116), 116, 117]).sum()
    assert not np.isin(ours[np.isin(source, [18, 19, 20, 52, 63, 86, 87])], list(LABELS.values())).any()
    masks = structure_masks(ours)
    assert masks.shape == (11, *ours.shape) and masks.dtype == bool


def test_folder_of_structures(tmp_path):
    source = sitk.ReadImage(str(shared_file("totalsegmentator/example_seg.nii.gz")))
    values = sitk.GetArrayFromImage(source)
    for name in ("liver", "lung_lower_lobe_left", "lung_upper_lobe_right", "vertebrae_T12", "rib_left_9", "sternum"):
        mask = sitk.GetImageFromArray((values == TOTALSEGMENTATOR_V2_IDS.get(name, -1)).astype(np.uint8))
        mask.CopyInformation(source)
        sitk.WriteImage(mask, str(tmp_path / f"{name}.nii.gz"))
    (tmp_path / "notes.txt").write_text("ignored")
    ours = sitk.GetArrayFromImage(read_structures(tmp_path))
    assert (ours == LABELS["lung"]).sum() == np.isin(values, [11, 12]).sum()
    assert (ours == LABELS["vertebrae"]).sum() == (values == 32).sum()
    assert (ours == LABELS["liver"]).sum() == (values == 5).sum()


def test_label_errors(tmp_path):
    with pytest.raises(InputError, match="no label file"):
        read_structures(tmp_path)
    image = sitk.GetImageFromArray(np.full((4, 4, 4), 40, np.uint8))
    sitk.WriteImage(image, str(tmp_path / "ts.nii.gz"))
    with pytest.raises(InputError, match="totalsegmentator"):
        read_structures(tmp_path / "ts.nii.gz")
    with pytest.raises(InputError, match="unknown label format"):
        read_structures(tmp_path / "ts.nii.gz", "nnunet")


def test_pairs_csv_round_trip_and_errors(tmp_path):
    for name in ("a.nii.gz", "b.nii.gz", "sub/a_labels.nii.gz"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    record = PairRecord(tmp_path / "a.nii.gz", tmp_path / "b.nii.gz", tmp_path / "sub/a_labels.nii.gz")
    write_pairs_csv(tmp_path / "pairs.csv", [record])
    assert "sub/a_labels.nii.gz" in (tmp_path / "pairs.csv").read_text()
    assert read_pairs_csv(tmp_path / "pairs.csv") == [record]

    bad = tmp_path / "bad.csv"
    bad.write_text("fixed,labels\na.nii.gz,x\n")
    with pytest.raises(InputError, match=r"bad\.csv: missing column\(s\) moving"):
        read_pairs_csv(bad)
    bad.write_text("fixed,moving\na.nii.gz,missing.nii.gz\n")
    with pytest.raises(InputError, match=r"bad\.csv: line 2: moving file .*missing\.nii\.gz: no such file or folder"):
        read_pairs_csv(bad)
    bad.write_text("fixed,moving,label_format\na.nii.gz,b.nii.gz,weird\n")
    with pytest.raises(InputError, match="label_format"):
        read_pairs_csv(bad)
    with pytest.raises(InputError, match="no such pairs CSV"):
        read_pairs_csv(tmp_path / "none.csv")
    bad.write_text("fixed,moving,fixed_label\na.nii.gz,b.nii.gz,sub/a_labels.nii.gz\n")  # a typo, not ignored
    with pytest.raises(InputError, match=r"bad\.csv: unknown column\(s\) fixed_label"):
        read_pairs_csv(bad)
    bad.write_text("fixed,moving\n\n\na.nii.gz,missing.nii.gz\n")  # blank lines: the file's own line number
    with pytest.raises(InputError, match=r"bad\.csv: line 4: moving file"):
        read_pairs_csv(bad)
    spreadsheet = tmp_path / "excel.csv"  # byte-order mark and spaces after the commas
    spreadsheet.write_text("fixed, moving, fixed_labels\r\na.nii.gz, b.nii.gz, sub/a_labels.nii.gz\r\n",
                           encoding="utf-8-sig")
    assert read_pairs_csv(spreadsheet) == [record]
