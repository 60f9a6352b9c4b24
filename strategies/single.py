"""One process, no communication: the reference every distributed strategy must reproduce."""
from ffnbench.strategies.base import LayoutError, Strategy, register


@register
class Single(Strategy):
    """One process, no communication (the reference)."""
    name = "single"
    order, color, simulator_model = 0, "#4d4d4d", "ring_allreduce"  # one worker: an all-reduce of one

    @classmethod
    def roles(cls, ranks, options):
        if ranks != 1:
            raise LayoutError(f"strategy single runs on 1 rank (got ranks={ranks})")
        return ["worker"]

    def train(self):
        ctx, rec, model = self.ctx, self.ctx.recorder, self.model
        for step in range(ctx.settings.steps):
            model.set_lr(ctx.lr(step))
            with rec.phase("data"):
                batch = ctx.stream.next_batch()
            with rec.phase("compute"):
                loss, logits = model.train_step(batch)
                ctx.stream.feedback(logits)
            rec.step(step, len(batch), loss, model_version=step + 1)
