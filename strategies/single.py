"""One process, no communication: the reference every distributed strategy must reproduce."""
from strategies.base import LayoutError, Strategy, register


@register
class Single(Strategy):
    """One process, no communication (the reference)."""
    name = "single"

    @classmethod
    def roles(cls, ranks, options):
        if ranks != 1:
            raise LayoutError(f"strategy single runs on 1 rank (got ranks={ranks})")
        return ["worker"]

    def loop(self):
        run, model = self.run, self.model
        for step in range(run.steps):
            model.set_lr(run.lr(step))
            with run.recorder.phase("data"):
                batch = run.stream.next_batch()
            with run.recorder.phase("compute"):
                loss, logits = model.train_step(batch)
                run.stream.feedback(logits)
            run.recorder.step(step, len(batch), loss)
            run.after_step(step, fovs_total=(step + 1) * len(batch))
