"""A safetensors file is never mistaken for a pickle, whatever its header length (its first byte can be 0x80, the
pickle protocol's first byte)."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from gliofed.runs import _is_pickle, _load_pair


def test_a_header_length_starting_with_0x80_is_still_safetensors(tmp_path):
    path = tmp_path / "state.safetensors"
    for extra in range(300):  # grow the metadata until the header's length has 0x80 as its low byte
        save_file({"w": torch.zeros(2)}, str(path), metadata={"gliofed": "checkpoint", "pad": "x" * extra})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    path.with_suffix(".json").write_text('{"format": 2, "w": {"__tensor__": "w"}}')
    assert not _is_pickle(path)
    assert torch.equal(_load_pair(path)["w"], torch.zeros(2))


def test_a_pickle_is_still_a_pickle(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"model": {}}, path)
    assert _is_pickle(path)
    path.write_bytes(b"\x80\x04" + b"\x95" * 20)
    assert _is_pickle(path)
