"""One process, no communication: the reference every distributed strategy must reproduce."""
from ffnbench.strategies.base import SyncDataParallel, register
from ffnbench.strategies.declare import LayoutError


@register
class Single(SyncDataParallel):
    """One process, no communication (the reference)."""
    name = "single"

    @classmethod
    def roles(cls, ranks, options):
        if ranks != 1:
            raise LayoutError(f"strategy single runs on 1 rank (got ranks={ranks})")
        return ["worker"]

    def update(self, batch):
        """Gradient and update fused in one graph: nothing to average."""
        with self.ctx.recorder.phase("compute"):
            return self.model.train_step(batch)
