"""The one enum of events: every hook the Trainer fires. Values are Lightning's hook names.

:class:`Event`'s docstring is the run in pseudocode. :data:`CALLBACK_EVENTS` are the hooks a
:class:`~fulmen.Callback` can implement (exactly the Callback class's public methods; a test checks it);
every other member is a LightningModule (or LightningDataModule) hook. The dispatcher
(:mod:`fulmen.core.dispatch`) accepts only these names: it checks a name the first time it builds its table
entry for it in a run, so a misspelled hook fails loudly instead of silently calling nothing.
"""

from __future__ import annotations

from enum import Enum


class Event(str, Enum):
    """Every hook, in the order a run fires them (``trainer.fit``; validate/test/predict run one eval epoch)::

        configure_callbacks; prepare_data
        setup(stage)                       # callbacks, then module
        configure_model; configure_optimizers
        on_load_checkpoint; load_state_dict    # resuming (ckpt_path=...): module and callbacks, callback states
        on_fit_start; zero_grad
        [sanity check]: on_sanity_check_start; val_dataloader; on_validation_model_eval
                        on_validation_start; [eval epoch X=validation]; on_validation_end; on_sanity_check_end
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
                             on_validation_start; [eval epoch X=validation]; on_validation_end
                             on_validation_model_train
                lr_scheduler_step (interval="step", ReduceLROnPlateau: sees this batch's validation)
                [checkpoint]: on_save_checkpoint; state_dict    # module and callbacks, callback states
            on_train_epoch_end  (callbacks, module, then monitoring callbacks)
            lr_scheduler_step (interval="epoch", ReduceLROnPlateau)
        on_train_end; on_fit_end; teardown(stage)
        on_exception                       # instead of the rest, when the run raises

        [eval epoch X]: on_X_epoch_start
                        for batch: transfer hooks; on_X_batch_start; X_step; on_X_batch_end
                        on_X_epoch_end

        trainer.validate: val_dataloader; on_validation_model_eval; on_validation_start
                          on_validation_epoch_start
                          for batch: on_validation_batch_start; validation_step; on_validation_batch_end
                          on_validation_epoch_end; on_validation_end; on_validation_model_train
        trainer.test:     test_dataloader; on_test_model_eval; on_test_start; on_test_epoch_start
                          for batch: on_test_batch_start; test_step; on_test_batch_end
                          on_test_epoch_end; on_test_end; on_test_model_train
        trainer.predict:  predict_dataloader; on_predict_model_eval; on_predict_start; on_predict_epoch_start
                          for batch: on_predict_batch_start; predict_step; on_predict_batch_end
                          on_predict_epoch_end; on_predict_end
    """

    # set-up
    CONFIGURE_CALLBACKS = "configure_callbacks"
    PREPARE_DATA = "prepare_data"
    SETUP = "setup"
    CONFIGURE_MODEL = "configure_model"
    CONFIGURE_OPTIMIZERS = "configure_optimizers"
    ON_FIT_START = "on_fit_start"
    ON_FIT_END = "on_fit_end"
    TEARDOWN = "teardown"
    ON_EXCEPTION = "on_exception"
    # data
    TRAIN_DATALOADER = "train_dataloader"
    VAL_DATALOADER = "val_dataloader"
    TEST_DATALOADER = "test_dataloader"
    PREDICT_DATALOADER = "predict_dataloader"
    ON_BEFORE_BATCH_TRANSFER = "on_before_batch_transfer"
    TRANSFER_BATCH_TO_DEVICE = "transfer_batch_to_device"
    ON_AFTER_BATCH_TRANSFER = "on_after_batch_transfer"
    # sanity check
    ON_SANITY_CHECK_START = "on_sanity_check_start"
    ON_SANITY_CHECK_END = "on_sanity_check_end"
    # training
    ON_TRAIN_START = "on_train_start"
    ON_TRAIN_EPOCH_START = "on_train_epoch_start"
    ON_TRAIN_BATCH_START = "on_train_batch_start"
    TRAINING_STEP = "training_step"
    OPTIMIZER_STEP = "optimizer_step"
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
    # validation
    ON_VALIDATION_MODEL_ZERO_GRAD = "on_validation_model_zero_grad"
    ON_VALIDATION_MODEL_EVAL = "on_validation_model_eval"
    ON_VALIDATION_MODEL_TRAIN = "on_validation_model_train"
    ON_VALIDATION_START = "on_validation_start"
    ON_VALIDATION_EPOCH_START = "on_validation_epoch_start"
    ON_VALIDATION_BATCH_START = "on_validation_batch_start"
    VALIDATION_STEP = "validation_step"
    ON_VALIDATION_BATCH_END = "on_validation_batch_end"
    ON_VALIDATION_EPOCH_END = "on_validation_epoch_end"
    ON_VALIDATION_END = "on_validation_end"
    # test
    ON_TEST_MODEL_EVAL = "on_test_model_eval"
    ON_TEST_MODEL_TRAIN = "on_test_model_train"
    ON_TEST_START = "on_test_start"
    ON_TEST_EPOCH_START = "on_test_epoch_start"
    ON_TEST_BATCH_START = "on_test_batch_start"
    TEST_STEP = "test_step"
    ON_TEST_BATCH_END = "on_test_batch_end"
    ON_TEST_EPOCH_END = "on_test_epoch_end"
    ON_TEST_END = "on_test_end"
    # predict
    ON_PREDICT_MODEL_EVAL = "on_predict_model_eval"
    ON_PREDICT_START = "on_predict_start"
    ON_PREDICT_EPOCH_START = "on_predict_epoch_start"
    ON_PREDICT_BATCH_START = "on_predict_batch_start"
    PREDICT_STEP = "predict_step"
    ON_PREDICT_BATCH_END = "on_predict_batch_end"
    ON_PREDICT_EPOCH_END = "on_predict_epoch_end"
    ON_PREDICT_END = "on_predict_end"
    # checkpoints
    ON_SAVE_CHECKPOINT = "on_save_checkpoint"
    ON_LOAD_CHECKPOINT = "on_load_checkpoint"
    STATE_DICT = "state_dict"
    LOAD_STATE_DICT = "load_state_dict"


#: The hooks a :class:`~fulmen.Callback` implements (its public methods, exactly).
CALLBACK_EVENTS: frozenset[Event] = frozenset(
    {
        Event.SETUP, Event.TEARDOWN, Event.ON_FIT_START, Event.ON_FIT_END, Event.ON_EXCEPTION,
        Event.ON_SANITY_CHECK_START, Event.ON_SANITY_CHECK_END,
        Event.ON_TRAIN_START, Event.ON_TRAIN_EPOCH_START, Event.ON_TRAIN_BATCH_START, Event.ON_TRAIN_BATCH_END,
        Event.ON_TRAIN_EPOCH_END, Event.ON_TRAIN_END,
        Event.ON_BEFORE_ZERO_GRAD, Event.ON_BEFORE_BACKWARD, Event.ON_AFTER_BACKWARD, Event.ON_BEFORE_OPTIMIZER_STEP,
        Event.ON_VALIDATION_START, Event.ON_VALIDATION_EPOCH_START, Event.ON_VALIDATION_BATCH_START,
        Event.ON_VALIDATION_BATCH_END, Event.ON_VALIDATION_EPOCH_END, Event.ON_VALIDATION_END,
        Event.ON_TEST_START, Event.ON_TEST_EPOCH_START, Event.ON_TEST_BATCH_START, Event.ON_TEST_BATCH_END,
        Event.ON_TEST_EPOCH_END, Event.ON_TEST_END,
        Event.ON_PREDICT_START, Event.ON_PREDICT_EPOCH_START, Event.ON_PREDICT_BATCH_START,
        Event.ON_PREDICT_BATCH_END, Event.ON_PREDICT_EPOCH_END, Event.ON_PREDICT_END,
        Event.ON_SAVE_CHECKPOINT, Event.ON_LOAD_CHECKPOINT, Event.STATE_DICT, Event.LOAD_STATE_DICT,
    }
)

#: Every hook name, for the dispatcher's check.
HOOK_NAMES: frozenset[str] = frozenset(e.value for e in Event)


def check_hook_name(name: str) -> None:
    """Raise if ``name`` is not an :class:`Event` (called once per name and run by the dispatcher)."""
    if name not in HOOK_NAMES:
        raise ValueError(
            f"{name!r} is not a hook: it is not a value of fulmen.core.events.Event. This is a bug in the code "
            "that dispatched it. Fix: use the hook's Lightning name, or add the new hook to Event (and to the "
            "pseudocode in its docstring)."
        )
