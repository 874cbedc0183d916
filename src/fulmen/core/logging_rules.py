"""Where ``self.log`` may be called and its ``on_step``/``on_epoch`` defaults per hook (spec §1.3)."""

from __future__ import annotations

# (default on_step, default on_epoch, forced): forced hooks accept only on_step=False, on_epoch=True.
_STEP = (True, False, False)
_EVAL = (False, True, False)
_EPOCH = (False, True, True)

LOG_RULES: dict[str, tuple[bool, bool, bool]] = {
    **dict.fromkeys(
        (
            "training_step",
            "on_train_batch_start",
            "on_train_batch_end",
            "on_before_backward",
            "backward",
            "on_after_backward",
            "on_before_optimizer_step",
            "optimizer_step",
            "on_before_zero_grad",
            "optimizer_zero_grad",
            "configure_gradient_clipping",
            "clip_gradients",
        ),
        _STEP,
    ),
    **dict.fromkeys(
        (
            "validation_step",
            "test_step",
            "on_validation_batch_start",
            "on_validation_batch_end",
            "on_test_batch_start",
            "on_test_batch_end",
        ),
        _EVAL,
    ),
    **dict.fromkeys(
        (
            "on_train_epoch_start",
            "on_train_epoch_end",
            "on_validation_epoch_start",
            "on_validation_epoch_end",
            "on_test_epoch_start",
            "on_test_epoch_end",
            "on_train_start",
            "on_validation_start",
            "on_test_start",
            "on_validation_model_eval",
            "on_validation_model_train",
            "on_test_model_eval",
            "on_test_model_train",
            "on_validation_model_zero_grad",
        ),
        _EPOCH,
    ),
}
