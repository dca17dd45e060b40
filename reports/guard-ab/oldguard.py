from statistics import median
class OldGuard:
    """A check of the policy against plain decoding by the clock. Once `min_rounds` drafting rounds
    have been timed, drafting whose discounted seconds per committed token exceed the recent plain
    steps' is suspended for `backoff` tokens (16 at first, doubling each time up to 512), then
    allowed again with a fresh window: acceptance drifts within a generation, and so does what pays.

    The plain steps it compares with are those the policy takes anyway (nothing to draft), and
    where fewer than `probe_steps` were timed when the guard first has rounds to judge, it asks
    for plain steps then. Probing at the start of every call instead would cost short calls with
    good drafts a tenth of their time (two passes of ~15), and those need no guard."""

    def __init__(self, probe_steps: int = 2, min_rounds: int = 8, window: float = 0.9,
                 first_backoff: int = 16, max_backoff: int = 512) -> None:
        self.probe_steps, self.min_rounds, self.window = probe_steps, min_rounds, window
        self.backoff, self.max_backoff = first_backoff, max_backoff
        self.plain_times: list[float] = []
        self.seconds = self.tokens = 0.0
        self.rounds = 0
        self.resume_at = 0  # the token count from which drafting is allowed again
        self.suspensions: list[int] = []  # the token counts at which drafting was suspended

    def allows_drafting(self, new_tokens: int) -> bool:
        if self.rounds >= self.min_rounds and len(self.plain_times) < self.probe_steps:
            return False  # rounds to judge, too few plain steps to judge them by: probe now
        return new_tokens >= self.resume_at

    def plain_step(self, seconds: float) -> None:
        self.plain_times = (self.plain_times + [seconds])[-8:]

    def drafting_round(self, seconds: float, committed: int, new_tokens: int) -> None:
        self.seconds = self.seconds * self.window + seconds
        self.tokens = self.tokens * self.window + committed
        self.rounds += 1
        if self.rounds >= self.min_rounds and self.plain_times and self.seconds / self.tokens > median(
                self.plain_times):
            self.suspensions.append(new_tokens)
            self.resume_at = new_tokens + self.backoff
            self.backoff = min(2 * self.backoff, self.max_backoff)
            self.seconds = self.tokens = 0.0
            self.rounds = 0


