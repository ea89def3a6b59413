"""`compare_train_speed.py --jax_pythonpath=TREE` for a tree from before `partitioning.Layout`."""


class PreLayout:
    """The `Layout` calls this benchmark makes, over a tree that passed `(mesh, rules)` pairs.

    Lets `--jax_pythonpath` time the framework as it was before the layout
    object (issue 12's before/after), with the same worker code. The
    `--no_donate` ablation needs the current tree.
    """

    _functions: tuple = ()

    def __init__(self, mesh, rules):
        from llmos_jax.partitioning import LogicalSharder
        self.mesh, self.rules = mesh, rules
        self.activation_sharder = LogicalSharder(mesh, rules)

    def global_batch(self, batch):
        from llmos_jax.partitioning import host_local_to_global
        return host_local_to_global(batch, self.mesh, self.rules)

    @classmethod
    def wrap(cls, state_shardings, make_train_step, jit_train_step):
        cls._functions = (
            lambda spec, tx, layout: state_shardings(spec, tx, layout.mesh, layout.rules),
            lambda spec, tx, lr, config, layout: make_train_step(spec, tx, lr, config,
                                                                 layout.mesh, layout.rules),
            lambda step, shardings, ranks, layout: jit_train_step(step, shardings, ranks,
                                                                  layout.mesh, layout.rules))
        return cls

    @classmethod
    def functions(cls) -> tuple:
        return cls._functions
