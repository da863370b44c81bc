def einplan_kernel(
    x0: Float[Tensor, 'b1 b2 n'],
    x1: Float[Tensor, 'b1 b2 n'],
) -> Float[Tensor, 'b1 b2']:
    """b1 b2 n, b1 b2 n -> b1 b2  (primed: b1 b2 n, b1 b2 n -> b1 b2)"""
    t0 = (x0 * x1).sum(-1)  # elementwise-sum: b1 b2 n, b1 b2 n -> b1 b2
    return t0
