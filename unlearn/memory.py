

def choose_micro(share: int, act_bytes, free_bytes: int, reserve: int, margin: float = 0.8, reduce_min=None) -> int:
    """The largest micro-batch ``m <= share`` whose activations ``act_bytes(m)`` fit ``margin * free_bytes - reserve``
    (``reserve``: gradients and optimizer state, not allocated yet), at least 1; ``reduce_min(int) -> int`` makes
    every process use the smallest choice (an all-reduce MIN), so all of them run the same micro-batches."""
    budget = margin * free_bytes - reserve
    lo, hi = 1, max(1, share)
    while lo < hi:  # act_bytes grows with m: binary search for the last m that fits
        mid = (lo + hi + 1) // 2
        if act_bytes(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return int(reduce_min(lo)) if reduce_min is not None else lo
