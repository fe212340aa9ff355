"""The server is the one source of segment-everything defaults, and they are the official ones."""

from __future__ import annotations

import dataclasses
import inspect

from segment_anything import SamAutomaticMaskGenerator

from samserve.core.amg import AmgParams

#: Official parameters the service does not take: the model is the server's, and custom point
#: grids are not on the wire (points_per_side builds the official grid).
NOT_SERVED = {"self", "model", "point_grids"}


def test_defaults_equal_the_official_generator() -> None:
    official = {
        name: p.default
        for name, p in inspect.signature(SamAutomaticMaskGenerator.__init__).parameters.items()
        if name not in NOT_SERVED
    }
    ours = {f.name: f.default for f in dataclasses.fields(AmgParams)}
    assert ours == official
