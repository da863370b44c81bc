def einplan_kernel(
    x0: Float[Tensor, 'b n'],
    x1: Float[Tensor, 'm n'],
) -> Float[Tensor, 'b m']:
    """b n, m n -> b m  (primed: b n, m n -> b m)"""
    t0 = torch.matmul(x0, x1.mT)  # matmul-broadcast: b n, m n -> b m
    return t0
