"""Converters from the official release layouts of public brain-MRI datasets to nnU-Net's raw format."""
from __future__ import annotations

from sadm_nnunet.datasets.converters import atlas2, brats21, ixi, wmh
from sadm_nnunet.datasets.converters.common import Release

RELEASES: dict[str, Release] = {r.kind: r for r in (ixi.RELEASE, brats21.RELEASE, atlas2.RELEASE, wmh.RELEASE)}
