"""Write networks in the exact pickle layout of an official EG3D snapshot, without EG3D's code.

EG3D's `torch_utils.persistence` turns every instance of a decorated class into
`torch_utils.persistence._reconstruct_persistent_obj(meta)` with
`meta = {type: 'class', version: 6, module_src, class_name, state}` (state: the module's `__dict__` plus
`_init_args` and `_init_kwargs`); undecorated modules (OSGDecoder, the renderer) are pickled by reference to their
`training.*` module; tensors pickle as torch always does (`_rebuild_tensor_v2` over a nested legacy
`torch.save` blob loaded by `torch.storage._load_from_bytes`). This writer produces that stream from our port.
"""

import pickle

import torch

# Classes that EG3D does not decorate: pickled by reference (module, name).
BY_REFERENCE = {
    "OSGDecoder": "training.triplane",
    "ImportanceRenderer": "training.volumetric_rendering.renderer",
    "RaySampler": "training.volumetric_rendering.ray_sampler",
    "MipRayMarcher2": "training.volumetric_rendering.ray_marcher",
}


class EasyDict(dict):
    """Stands for `dnnlib.util.EasyDict` in the stream."""


def _reconstruct_persistent_obj(meta):
    """Stands for `torch_utils.persistence._reconstruct_persistent_obj` in the stream; never called."""
    raise AssertionError("only written, never called")


class OfficialPickler(pickle._Pickler):
    """Pure-Python pickler whose globals and persistent objects follow EG3D's snapshot layout.

    `init_kwargs` maps id(module) -> the kwargs it was built with (kept as `_init_kwargs`); `module_src` is
    stored as each persistent object's source text, which a safe loader must never run.
    """

    def __init__(self, file, init_kwargs: dict, module_src: str):
        super().__init__(file, protocol=4)
        self.init_kwargs = init_kwargs
        self.module_src = module_src
        self.globals = {id(_reconstruct_persistent_obj): ("torch_utils.persistence", "_reconstruct_persistent_obj"),
                        id(EasyDict): ("dnnlib.util", "EasyDict")}

    def reducer_override(self, obj):
        cls = type(obj)
        if not isinstance(obj, torch.nn.Module) or cls.__module__.startswith("torch."):
            return NotImplemented
        if cls.__name__ in BY_REFERENCE:
            self.globals[id(cls)] = (BY_REFERENCE[cls.__name__], cls.__name__)
            return NotImplemented
        state = dict(obj.__getstate__())
        state["_init_args"] = ()
        state["_init_kwargs"] = EasyDict(self.init_kwargs.get(id(obj), {}))
        meta = dict(type="class", version=6, module_src=self.module_src, class_name=cls.__name__, state=state)
        return _reconstruct_persistent_obj, (meta,)

    def save(self, obj, save_persistent_id=True):
        if id(obj) not in self.globals or id(obj) in self.memo:
            return super().save(obj, save_persistent_id)
        module, name = self.globals[id(obj)]
        super().save(module)
        super().save(name)
        self.write(pickle.STACK_GLOBAL)
        self.memoize(obj)


def write_official_pickle(path, networks: dict, init_kwargs: dict, training_set_kwargs=None,
                          module_src="# EG3D module source (never run by editkit)\n"):
    """Write `{**networks, 'training_set_kwargs': ...}` as an official EG3D snapshot would be.

    `init_kwargs`: {name: kwargs} for the top-level networks of `networks`.
    """
    data = dict(training_set_kwargs=EasyDict(training_set_kwargs or {}))
    data.update(networks)
    kwargs_by_id = {id(networks[name]): EasyDict(kwargs) for name, kwargs in init_kwargs.items()}
    with open(path, "wb") as f:
        OfficialPickler(f, kwargs_by_id, module_src).dump(data)
    return path


def call_pickle(module, name, args):
    """A protocol-0 pickle that calls `module.name(*args)` when loaded: what an attacker would ship."""
    return f"c{module}\n{name}\n".encode() + pickle.dumps(args, protocol=0)[:-1] + b"R."
