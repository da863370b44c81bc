def einplan_kernel(
    x0: Float[Tensor, 'b1 b2 n'],
    x1: Float[Tensor, 'n n'],
    x2: Float[Tensor, 'b1 b2 n'],
) -> Float[Tensor, 'b1 b2']:
    """b1 b2 n, n n, b1 b2 n -> b1 b2  (primed: b1 b2 n, n n', b1 b2 n' -> b1 b2)"""
    t0 = torch.matmul(x0, x1)  # matmul-broadcast: b1 b2 n, n n' -> b1 b2 n'
    t1 = (x2 * t0).sum(-1)  # elementwise-sum: b1 b2 n', b1 b2 n' -> b1 b2
    return t1
