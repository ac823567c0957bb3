"""The loopback Hub (`local_hub` fixture) behaves like the Hub for huggingface_hub and transformers clients."""

import json

import numpy as np
import pytest
import torch
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors.torch import load_file, save_file

# huggingface_hub's own LFS upload passes a file object as `data=`, which httpx deprecates: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")


def _folder(tmp_path):
    folder = tmp_path / "upload"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"hidden_size": 8, "note": "tiny"}))
    save_file({"weight": torch.arange(12, dtype=torch.float32).reshape(3, 4)}, str(folder / "model.safetensors"))
    return folder


def test_upload_folder_then_download_identical_bytes(local_hub, tmp_path):
    api = HfApi(token=local_hub.token)
    repo_url = api.create_repo("user/tiny")
    assert repo_url.repo_id == "user/tiny" and str(repo_url).startswith(local_hub.endpoint)
    folder = _folder(tmp_path)

    info = api.upload_folder(folder_path=str(folder), repo_id="user/tiny")
    print("commit url:", info.commit_url)
    assert info.commit_url == f"{local_hub.endpoint}/user/tiny/commit/{info.oid}"

    # .safetensors went through git-LFS (batch API + PUT of the content), the json inline in the commit
    assert local_hub.lfs_files("user/tiny") == {"model.safetensors"}
    paths = [path for _, path in local_hub.requests]
    assert "/user/tiny.git/info/lfs/objects/batch" in paths
    assert any(path.startswith("/__lfs__/upload/") for path in paths)

    for name in ("config.json", "model.safetensors"):
        downloaded = hf_hub_download("user/tiny", name)
        assert downloaded.startswith(str(tmp_path / "hf_home" / "hub"))  # the fixture's private cache
        with open(downloaded, "rb") as f:
            assert f.read() == (folder / name).read_bytes()
    weight = load_file(hf_hub_download("user/tiny", "model.safetensors"))["weight"]
    assert torch.equal(weight, torch.arange(12.0).reshape(3, 4))

    # pinned to the returned commit, and the repo API agrees
    assert hf_hub_download("user/tiny", "config.json", revision=info.oid).endswith("config.json")
    repo_info = api.model_info("user/tiny")
    assert repo_info.sha == info.oid
    assert sorted(api.list_repo_files("user/tiny")) == [".gitattributes", "config.json", "model.safetensors"]

    # re-uploading unchanged files makes no new commit; a change does
    assert api.upload_folder(folder_path=str(folder), repo_id="user/tiny").oid == info.oid
    (folder / "config.json").write_text("{}")
    second = api.upload_folder(folder_path=str(folder), repo_id="user/tiny")
    assert second.oid != info.oid and local_hub.files("user/tiny")["config.json"] == b"{}"


def test_writes_need_a_valid_token(local_hub, tmp_path):
    with pytest.raises(HfHubHTTPError) as error:
        HfApi(token=False).create_repo("user/anonymous")
    assert error.value.response.status_code == 401

    HfApi(token=local_hub.token).create_repo("user/tiny")
    folder = _folder(tmp_path)
    with pytest.raises(HfHubHTTPError) as error:
        HfApi(token=False).upload_folder(folder_path=str(folder), repo_id="user/tiny")
    assert error.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError, match="Invalid credentials"):
        HfApi(token="wrong-token").upload_folder(folder_path=str(folder), repo_id="user/tiny")
    assert set(local_hub.files("user/tiny")) == {".gitattributes"}  # nothing was committed
    # reading a public repo needs no token
    assert hf_hub_download("user/tiny", ".gitattributes", token=False)


def test_missing_repo_revision_and_file_raise_hub_errors(local_hub):
    HfApi(token=local_hub.token).create_repo("user/tiny")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("user/tiny", "model.safetensors.index.json")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("user/tiny", ".gitattributes", revision="no-such-branch")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("user/missing", "config.json")
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info("user/missing")


def test_private_repo_is_hidden_without_token(local_hub):
    api = HfApi(token=local_hub.token)
    api.create_repo("user/secret", private=True)
    assert api.model_info("user/secret").private is True
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).model_info("user/secret")


def _tiny_sam_and_processor():
    from transformers import SamImageProcessor, SamModel, SamProcessor

    from supersam_hf.configuration_supersam import build_sam_config

    torch.manual_seed(0)
    config = build_sam_config(image_size=64, hidden_size=32, num_hidden_layers=2, output_channels=32)
    model = SamModel(config).eval()
    with torch.no_grad():  # SAM initialises the encoder at ~1e-10: give every weight a useful scale
        for param in model.parameters():
            param.normal_(0.0, 0.1)
    processor = SamProcessor(
        image_processor=SamImageProcessor(
            size={"longest_edge": 64},
            pad_size={"height": 64, "width": 64},
            mask_size={"longest_edge": 16},
            mask_pad_size={"height": 16, "width": 16},
        )
    )
    return model, processor


def test_transformers_sam_round_trip(local_hub, tmp_path):
    from transformers import SamModel, SamProcessor

    model, processor = _tiny_sam_and_processor()
    local = tmp_path / "tiny-sam"
    model.save_pretrained(local)
    processor.save_pretrained(local)
    api = HfApi(token=local_hub.token)
    api.create_repo("user/tiny-sam")
    info = api.upload_folder(folder_path=str(local), repo_id="user/tiny-sam", commit_message="tiny SAM")
    print("commit url:", info.commit_url)
    assert info.commit_url.startswith(local_hub.endpoint + "/user/tiny-sam/commit/")

    loaded = SamModel.from_pretrained("user/tiny-sam").eval()
    loaded_processor = SamProcessor.from_pretrained("user/tiny-sam")

    image = (np.random.default_rng(0).random((48, 40, 3)) * 255).astype(np.uint8)
    inputs = processor(images=image, input_points=[[[20.0, 24.0]]], return_tensors="pt")
    loaded_inputs = loaded_processor(images=image, input_points=[[[20.0, 24.0]]], return_tensors="pt")
    assert torch.equal(inputs["pixel_values"], loaded_inputs["pixel_values"])
    assert torch.equal(inputs["input_points"], loaded_inputs["input_points"])
    with torch.no_grad():
        expected, got = model(**inputs), loaded(**inputs)
    assert expected.pred_masks.std() > 0  # a comparison of something that varies
    # Same weights; a freshly loaded model may lay tensors out differently, so allow float-reassociation noise.
    torch.testing.assert_close(got.pred_masks, expected.pred_masks, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.iou_scores, expected.iou_scores, rtol=1e-5, atol=1e-6)
    # the weights came through the loopback hub, not the local folder
    downloads = [path for method, path in local_hub.requests if method == "GET" and "/resolve/" in path]
    assert f"/user/tiny-sam/resolve/{info.oid}/model.safetensors" in downloads


def test_transformers_push_to_hub(local_hub):
    from transformers import SamModel

    model, _ = _tiny_sam_and_processor()
    commit = model.push_to_hub("user/pushed-sam", token=local_hub.token)
    assert str(commit.commit_url).startswith(local_hub.endpoint)
    assert {"config.json", "model.safetensors"} <= set(local_hub.files("user/pushed-sam"))
    loaded = SamModel.from_pretrained("user/pushed-sam")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_listing_pull_requests_and_dataset_repos(local_hub):
    from huggingface_hub import snapshot_download
    from huggingface_hub.hf_api import RepoFile, RepoFolder

    api = HfApi(token=local_hub.token)
    api.create_repo("user/tree")
    assert str(api.create_repo("user/tree", exist_ok=True)) == f"{local_hub.endpoint}/user/tree"
    api.upload_file(path_or_fileobj=b"hello", path_in_repo="sub/dir/x.txt", repo_id="user/tree")
    api.upload_file(path_or_fileobj=b"\x00" * 100, path_in_repo="w.bin", repo_id="user/tree")

    top = {entry.path: type(entry) for entry in api.list_repo_tree("user/tree")}
    assert top == {".gitattributes": RepoFile, "sub": RepoFolder, "w.bin": RepoFile}
    nested = {entry.path for entry in api.list_repo_tree("user/tree", recursive=True)}
    assert nested == {".gitattributes", "sub", "sub/dir", "sub/dir/x.txt", "w.bin"}
    (bin_info,) = api.get_paths_info("user/tree", ["w.bin", "missing"])
    assert bin_info.lfs is not None and bin_info.lfs.size == 100
    snapshot = snapshot_download("user/tree")
    with open(f"{snapshot}/sub/dir/x.txt", "rb") as f:
        assert f.read() == b"hello"

    pr = api.upload_file(path_or_fileobj=b"pr", path_in_repo="pr.txt", repo_id="user/tree", create_pr=True)
    assert pr.pr_revision == "refs/pr/1" and pr.pr_url.startswith(local_hub.endpoint)
    assert "pr.txt" in api.list_repo_files("user/tree", revision=pr.pr_revision)
    assert "pr.txt" not in api.list_repo_files("user/tree")

    api.create_repo("user/data", repo_type="dataset")
    api.upload_file(path_or_fileobj=b"a,b\n1,2\n", path_in_repo="data.csv", repo_id="user/data", repo_type="dataset")
    with open(hf_hub_download("user/data", "data.csv", repo_type="dataset"), "rb") as f:
        assert f.read() == b"a,b\n1,2\n"
    api.delete_repo("user/tree")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("user/tree")
