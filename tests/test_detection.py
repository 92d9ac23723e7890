"""Detection behaviour: after training on good samples, an injected defect raises the score."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import binary_dilation


@pytest.fixture(scope="module")
def trained(trained_bagel):
    return trained_bagel


@pytest.mark.parametrize("defect", ["color", "contamination"])
def test_a_defect_raises_the_score_and_the_map_peaks_inside_it(trained, defect):
    from bridgenet.data.synth.dataset import make_sample, render_sample
    from bridgenet.predict import predict_arrays

    params, _, model = trained
    synth = params.synth
    raises, peaks = 0, 0
    for index in range(4):
        scene, _, broken = make_sample(synth.seed + 99, "bagel", "test", defect, index,
                                       synth.image_size, synth.noise_std_m)
        intact = render_sample(scene, None)
        bad = predict_arrays(model, broken.rgb, broken.xyz)
        good = predict_arrays(model, intact.rgb, intact.xyz)
        raises += bad.score > good.score
        # The map's strongest rise over the intact render lies on the defect.
        rise = bad.anomaly_map - good.anomaly_map
        peak = np.unravel_index(np.argmax(rise), rise.shape)

        peaks += bool(binary_dilation(broken.mask, iterations=4)[peak])
    assert raises >= 3
    assert peaks >= 3


