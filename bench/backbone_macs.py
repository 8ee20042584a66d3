"""Counted MACs of every registered ImageNet backbone at its native resolution, against the
published figures (the backbone alone, one image; gfpipe's counter: torch.utils.flop_counter on
the meta device, MACs = FLOPs / 2). Counting runs no real compute: a second or two.

    PYTHONPATH=. .venv/bin/python bench/backbone_macs.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

from gfpipe.budget.costs import part_costs  # noqa: E402
from gfpipe.model import GFNetConfig  # noqa: E402

# (backbone, native input size, published GMACs or None, source)
PUBLISHED = [
    ("resnet50", 224, 4.089, "torchvision ResNet50_Weights.IMAGENET1K_V1 (_ops)"),
    ("densenet121", 224, 2.834, "torchvision DenseNet121_Weights (_ops)"),
    ("densenet169", 224, 3.36, "torchvision DenseNet169_Weights (_ops)"),
    ("densenet201", 224, 4.291, "torchvision DenseNet201_Weights (_ops)"),
    ("regnety_600m", 224, 0.6, "pycls MODEL_ZOO.md"),
    ("regnety_800m", 224, 0.8, "pycls MODEL_ZOO.md"),
    ("regnety_1.6g", 224, 1.6, "pycls MODEL_ZOO.md"),
    ("mobilenetv3_large_100", 224, 0.217, "TF-slim MobileNetV3 README (217M; the paper lists 219M)"),
    ("mobilenetv3_large_125", 224, None, "no published figure found (the paper only plots it)"),
    ("efficientnet_b2", 260, 1.0, "EfficientNet paper, Table 2"),
    ("efficientnet_b3", 300, 1.8, "EfficientNet paper, Table 2"),
]


def main() -> None:
    rows = []
    print("| backbone | input | counted GMACs | published | counted / published | source |")
    print("|---|---|---|---|---|---|")
    for name, size, published, source in PUBLISHED:
        config = GFNetConfig(backbone=name, input_size=size, patch_size=size, T=1, num_classes=1000)
        counted = part_costs(config).glance_encoder / 1e9
        ratio = counted / published if published else None
        rows.append({"backbone": name, "input": size, "counted_gmacs": counted, "published": published, "ratio": ratio})
        shown = f"{published:g}" if published else "-"
        print(f"| {name} | {size} | {counted:.4f} | {shown} | {f'{ratio:.3f}' if ratio else '-'} | {source} |")
    print(f"wrote {write_results('backbone_macs', {'rows': rows}, {'ratio': 'within 0.97-1.03'})}")


if __name__ == "__main__":
    main()
