"""``torch.save``: save a model in one of the three forms of torch.save.

* ``state_dict``: the parameters and buffers only (load into a model built by the same code);
* ``model``: the whole module, pickled (loading runs code: trusted files only, and the classes
  must be importable under the same module path);
* ``checkpoint``: a resume-training dict ``{epoch, state_dict, optimizer, **extra}`` whose
  ``optimizer`` is the state_dict of the optimizer named by ``optimizer``.

Loader snippets for each form are in docs/torch.md.
"""

from __future__ import annotations

from typing import Any, Dict, Literal, Optional

from pydantic import Field

from buildgraph.errors import StepFailed
from buildgraph.backends.torch.base import ModelExecutor, ModelParams, out_path


class TorchSaveParams(ModelParams):
    form: Literal["state_dict", "model", "checkpoint"] = Field(
        "state_dict", description="what to save: parameters only, the pickled module, or a "
                                  "resume-training checkpoint")
    epoch: int = Field(0, description="checkpoint: the epoch recorded")
    optimizer: str = Field("SGD", description="checkpoint: torch.optim class whose state is "
                                              "saved")
    optimizer_args: Dict[str, Any] = Field(default_factory=lambda: {"lr": 0.01, "momentum": 0.9},
                                           description="checkpoint: its constructor arguments")
    extra: Dict[str, Any] = Field(default_factory=dict,
                                  description="checkpoint: more fields stored in the dict")


class TorchSaveExecutor(ModelExecutor):
    """torch.save: state_dict, whole model, or resume-training checkpoint."""

    kind = "torch.save"
    version = "1"
    Params = TorchSaveParams
    outputs = {"model": "model.pt"}
    needs_inputs = False

    def run(self, task: Any) -> Optional[Dict[str, Any]]:
        torch = self.import_torch()

        p: TorchSaveParams = self.params(task)
        spec, model = self.model(task, p.model)
        dest = out_path(task)
        state = model.state_dict()
        meta: Dict[str, Any] = {"form": p.form, "tensors": len(state),
                                "parameters": int(sum(t.numel() for t in model.parameters())),
                                "class": f"{type(model).__module__}.{type(model).__qualname__}"}
        if p.form == "state_dict":
            with self.timed("save"):
                torch.save(state, dest)
        elif p.form == "model":
            try:
                with self.timed("save"):
                    torch.save(model, dest)
            except Exception as exc:  # noqa: BLE001 - e.g. a lambda or a local class
                raise StepFailed(f"the model cannot be pickled whole: {type(exc).__name__}: "
                                 f"{exc} (save form: state_dict instead)") from None
            task.log(f"whole model pickled; its classes load from module "
                     f"'{type(model).__module__}': put the directory of the model's source "
                     "on sys.path before torch.load(..., weights_only=False)")
        else:
            opt_cls = getattr(torch.optim, p.optimizer, None)
            if not (isinstance(opt_cls, type) and issubclass(opt_cls, torch.optim.Optimizer)):
                from buildgraph.errors import did_you_mean

                names = [n for n in dir(torch.optim) if isinstance(getattr(torch.optim, n), type)
                         and issubclass(getattr(torch.optim, n), torch.optim.Optimizer)]
                raise StepFailed(f"unknown optimizer torch.optim.{p.optimizer}"
                                 f"{did_you_mean(p.optimizer, names)}")
            try:
                with self.timed("optimizer"):
                    optimizer = opt_cls(model.parameters(), **p.optimizer_args)
            except TypeError as exc:
                raise StepFailed(f"torch.optim.{p.optimizer}(**optimizer_args): {exc}") from None
            clash = sorted({"epoch", "state_dict", "optimizer"} & set(p.extra))
            if clash:
                raise StepFailed(f"extra: '{clash[0]}' is a reserved checkpoint key")
            checkpoint = {"epoch": p.epoch, "state_dict": state,
                          "optimizer": optimizer.state_dict(), **p.extra}
            with self.timed("save"):
                torch.save(checkpoint, dest)
            meta.update(keys=list(checkpoint), optimizer=p.optimizer, epoch=p.epoch)
        meta["bytes"] = dest.stat().st_size
        meta["seconds"] = self.seconds
        return meta
