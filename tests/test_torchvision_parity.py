"""Parity: torchvision's fasterrcnn_resnet50_fpn imported into detkit gives the same detections.

The torchvision model is built with random weights and a fixed seed, saved, converted
with `detkit import-torchvision`, and run with `detkit detect` on a real photo.
"""

import cv2
import pytest
import torch
import torchvision
from _parity import assert_json_detections_equal, detect_photo, import_torchvision, real_photo

from detkit.data.images import image_to_tensor, read_image


@pytest.fixture(scope="module")
def torchvision_model_file(tmp_path_factory):
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, box_score_thresh=0.0
    ).eval()
    path = tmp_path_factory.mktemp("tv") / "fasterrcnn.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_import_and_detect_match_torchvision(torchvision_model_file, shared_data, tmp_path):
    tv_model, tv_file = torchvision_model_file
    photo = real_photo(shared_data, tmp_path)
    ckpt = import_torchvision("fasterrcnn_resnet50_fpn", tv_file, tmp_path / "detkit.pt")
    # random weights score every class about 1/91: keep everything, as the torchvision model does
    ours = detect_photo(ckpt, photo, tmp_path / "out", score_thresh=0.0, draw=True)

    with torch.no_grad():
        theirs = tv_model([image_to_tensor(read_image(photo))])[0]
    assert len(ours) == 100
    assert_json_detections_equal(ours, theirs, ckpt)
    assert (tmp_path / "out" / f"{photo.stem}.png").is_file()


def test_imported_model_matches_exactly_in_python(torchvision_model_file, tmp_path):
    """Same comparison without rounding, on a synthetic image with a non-square size."""
    from detkit.engine.build import load_model

    tv_model, tv_file = torchvision_model_file
    ckpt = import_torchvision("fasterrcnn_resnet50_fpn", tv_file, tmp_path / "detkit.pt")
    loaded, _ = load_model(ckpt, overrides=["model.postprocess.score_thresh=0.0"])
    rng = torch.Generator().manual_seed(1)
    image = torch.rand(3, 300, 451, generator=rng)
    image = torch.from_numpy(cv2.GaussianBlur(image.permute(1, 2, 0).numpy(), (9, 9), 3)).permute(2, 0, 1)
    with torch.no_grad():
        ours = loaded.model([image])[0][0]
        theirs = tv_model([image])[0]
    assert len(ours) == len(theirs["boxes"])
    assert torch.allclose(ours.boxes, theirs["boxes"], atol=1e-3)
    assert torch.allclose(ours.scores, theirs["scores"], atol=1e-5)
    assert torch.equal(ours.labels + 1, theirs["labels"])


def test_coco_model_classes_map_onto_a_coco_json_by_name(shared_data):
    """torchvision's 90 label slots (with N/A gaps) map onto the 80 named categories of a COCO json."""
    from detkit.data.coco import CocoDataset
    from detkit.engine.evaluate import label_map_by_name
    from detkit.importers import torchvision_coco_classes

    ann = shared_data("tiny_coco") / "annotations"
    dataset = CocoDataset(ann_file=sorted(ann.glob("instances_val*.json"))[0])
    model_classes = torchvision_coco_classes()
    label_map = label_map_by_name(model_classes, dataset.class_names, data="tiny_coco")
    assert label_map is not None and len(label_map) == 90
    for model_label, data_label in enumerate(label_map.tolist()):
        if data_label >= 0:
            # the same name and the same COCO category id on both sides
            assert dataset.class_names[data_label] == model_classes[model_label]
            assert dataset.category_ids[data_label] == model_label + 1
        else:
            assert model_classes[model_label].startswith("N/A")
    assert label_map_by_name(dataset.class_names, dataset.class_names, data="x") is None
    with pytest.raises(Exception, match="does not predict"):
        label_map_by_name(["person"], dataset.class_names, data="tiny_coco")
