"""The one enum of events. Values are Lightning's hook names.

The loop, in pseudocode (``trainer.fit``; validate/test/predict run the ``[eval epoch]`` part alone)::

    configure_callbacks; prepare_data
    setup(stage)                       # callbacks, then module
    configure_model; configure_optimizers
    on_fit_start; zero_grad
    [sanity check]: on_sanity_check_start; val_dataloader; on_validation_model_eval
                    on_validation_start; [eval epoch]; on_validation_end; on_sanity_check_end
    train_dataloader; on_train_start
    for epoch:
        on_train_epoch_start
        for batch:
            on_before_batch_transfer; transfer_batch_to_device; on_after_batch_transfer
            on_train_batch_start                      # -1 ends the epoch
            optimizer_step(closure):
                closure: training_step; [on_before_zero_grad; optimizer_zero_grad]
                         on_before_backward; backward; on_after_backward
                on_before_optimizer_step; configure_gradient_clipping
            lr_scheduler_step (interval="step"; on the epoch's last batch also interval="epoch")
            on_train_batch_end
            [val check]: on_validation_model_zero_grad; on_validation_model_eval
                         on_validation_start; [eval epoch]; on_validation_end; on_validation_model_train
            lr_scheduler_step (interval="step", ReduceLROnPlateau: sees this batch's validation)
        on_train_epoch_end  (callbacks, module, then monitoring callbacks)
        lr_scheduler_step (interval="epoch", ReduceLROnPlateau)
    on_train_end; on_fit_end; teardown(stage)

    [eval epoch]: on_X_epoch_start
                  for batch: transfer hooks; on_X_batch_start; X_step; on_X_batch_end
                  on_X_epoch_end
"""

from __future__ import annotations

from enum import Enum


class Event(str, Enum):
    CONFIGURE_CALLBACKS = "configure_callbacks"
    PREPARE_DATA = "prepare_data"
    SETUP = "setup"
    CONFIGURE_MODEL = "configure_model"
    CONFIGURE_OPTIMIZERS = "configure_optimizers"
    ON_FIT_START = "on_fit_start"
    ON_SANITY_CHECK_START = "on_sanity_check_start"
    ON_SANITY_CHECK_END = "on_sanity_check_end"
    ON_TRAIN_START = "on_train_start"
    ON_TRAIN_EPOCH_START = "on_train_epoch_start"
    ON_BEFORE_BATCH_TRANSFER = "on_before_batch_transfer"
    TRANSFER_BATCH_TO_DEVICE = "transfer_batch_to_device"
    ON_AFTER_BATCH_TRANSFER = "on_after_batch_transfer"
    ON_TRAIN_BATCH_START = "on_train_batch_start"
    OPTIMIZER_STEP = "optimizer_step"
    TRAINING_STEP = "training_step"
    ON_BEFORE_ZERO_GRAD = "on_before_zero_grad"
    OPTIMIZER_ZERO_GRAD = "optimizer_zero_grad"
    ON_BEFORE_BACKWARD = "on_before_backward"
    BACKWARD = "backward"
    ON_AFTER_BACKWARD = "on_after_backward"
    ON_BEFORE_OPTIMIZER_STEP = "on_before_optimizer_step"
    CONFIGURE_GRADIENT_CLIPPING = "configure_gradient_clipping"
    LR_SCHEDULER_STEP = "lr_scheduler_step"
    ON_TRAIN_BATCH_END = "on_train_batch_end"
    ON_TRAIN_EPOCH_END = "on_train_epoch_end"
    ON_TRAIN_END = "on_train_end"
    ON_FIT_END = "on_fit_end"
    TEARDOWN = "teardown"
    ON_EXCEPTION = "on_exception"
    ON_VALIDATION_MODEL_ZERO_GRAD = "on_validation_model_zero_grad"
    ON_VALIDATION_MODEL_EVAL = "on_validation_model_eval"
    ON_VALIDATION_MODEL_TRAIN = "on_validation_model_train"
    ON_TEST_MODEL_EVAL = "on_test_model_eval"
    ON_TEST_MODEL_TRAIN = "on_test_model_train"
    ON_PREDICT_MODEL_EVAL = "on_predict_model_eval"
    ON_SAVE_CHECKPOINT = "on_save_checkpoint"
    ON_LOAD_CHECKPOINT = "on_load_checkpoint"
