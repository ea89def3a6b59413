"""Loading a checkpoint warns when the gin model config drifts from the saved one."""

import dataclasses
import logging

from llmos_jax.cli.run_loading import _warn_on_config_drift
from llmos_jax.models import TransformerConfig

CONFIG = TransformerConfig(vocab_size=50, num_layers=2)


def _saved(config, drop=()):
    saved = dataclasses.asdict(config)
    for name in drop:
        del saved[name]
    return {"model_config": saved}


def test_changed_field_is_named(caplog):
    with caplog.at_level(logging.WARNING):
        _warn_on_config_drift(_saved(CONFIG), dataclasses.replace(CONFIG, num_layers=3))
    assert "differs from the checkpoint's in num_layers;" in caplog.text


def test_field_added_since_the_checkpoint_is_no_drift_at_its_default(caplog):
    """An older checkpoint lacks `mlp_hidden_dropout`: only a non-default value is drift."""
    with caplog.at_level(logging.WARNING):
        _warn_on_config_drift(_saved(CONFIG, drop=["mlp_hidden_dropout"]), CONFIG)
    assert caplog.text == ""
    with caplog.at_level(logging.WARNING):
        _warn_on_config_drift(_saved(CONFIG, drop=["mlp_hidden_dropout"]),
                              dataclasses.replace(CONFIG, mlp_hidden_dropout=True))
    assert "in mlp_hidden_dropout;" in caplog.text
