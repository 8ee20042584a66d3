"""Checkpoints saved to and loaded from a real S3 endpoint (the moto_server fixture)."""

import pytest
import torch

import gfpipe
from gfpipe.checkpoint import CheckpointError
from gfpipe.model import GFNet, GFNetConfig


@pytest.mark.slow
def test_checkpoint_round_trip_through_s3(s3_server):
    torch.manual_seed(0)
    model = GFNet(GFNetConfig(backbone="tiny", tiny_width=4, num_classes=3, input_size=64, patch_size=32, T=2)).eval()
    uri = f"s3://{s3_server.make_bucket('ckpt')}/runs/a/model.pt"
    gfpipe.save_checkpoint(model, uri, storage_options=s3_server.storage_options)
    loaded = gfpipe.load_checkpoint(uri, storage_options=s3_server.storage_options)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.anytime(x), loaded.anytime(x))
    with pytest.raises(OSError, match="model-missing.pt"):
        gfpipe.load_checkpoint(uri.replace("model.pt", "model-missing.pt"), storage_options=s3_server.storage_options)
    with pytest.raises((CheckpointError, OSError)):
        gfpipe.load_checkpoint("s3://no-such-bucket-xyz/model.pt", storage_options=s3_server.storage_options)
