"""The model cache uses an entry only for the network it was made for (issue 27, item 6).

A converted model copied over another network's entry (max pooling over avg, by a user or a sync
tool) has a valid size and digest, so only its record's ``network`` can tell: the cache compares
it with the request and makes the model again. No TensorFlow: the bytes stand in for a model.
"""

from __future__ import annotations

import logging
import shutil

from cbir.encoders.features import FeatureConfig
from cbir.encoders.model_cache import Cached, Failed, ModelCache, cache_slot, network_fields

AVG = network_fields(FeatureConfig(model="mobilenet", pooling="avg", width_multiplier=0.25), 224)
MAX = network_fields(FeatureConfig(model="mobilenet", pooling="max", width_multiplier=0.25), 224)


def test_a_model_copied_over_another_networks_entry_is_not_used(tmp_path, caplog):
    cache = ModelCache(tmp_path)
    avg, mx = cache_slot(AVG, "litert", "tflite"), cache_slot(MAX, "litert", "tflite")
    cache.store(avg, b"avg model", {"network": AVG})
    cache.store(mx, b"max model", {"network": MAX})
    found = cache.lookup(avg)
    assert isinstance(found, Cached) and found.path.read_bytes() == b"avg model"
    for src, dst in zip(cache.paths(mx)[:2], cache.paths(avg)[:2]):
        shutil.copyfile(src, dst)  # the max-pooling model and its (self-consistent) record
    with caplog.at_level(logging.WARNING):
        assert cache.lookup(avg) is None
    assert "names another network" in caplog.text
    assert isinstance(cache.lookup(mx), Cached)


def test_a_failure_recorded_for_another_network_is_not_believed(tmp_path, caplog):
    cache = ModelCache(tmp_path)
    avg, mx = cache_slot(AVG, "litert", "tflite"), cache_slot(MAX, "litert", "tflite")
    cache.store_failure(mx, "converted features differ", MAX)
    assert cache.lookup(mx) == Failed("converted features differ")
    shutil.copyfile(cache.paths(mx)[2], cache.paths(avg)[2])
    with caplog.at_level(logging.WARNING):
        assert cache.lookup(avg) is None
    assert "names another network" in caplog.text


def test_the_slot_keeps_its_key_and_compares_by_it():
    slot = cache_slot(AVG, "litert", "tflite")
    assert slot.network == AVG and slot == cache_slot(dict(AVG), "litert", "tflite")
    assert slot != cache_slot(MAX, "litert", "tflite")
