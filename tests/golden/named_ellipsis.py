def einplan_kernel(
    x0: Float[Tensor, '#*batch n'],
    x1: Float[Tensor, 'n m'],
) -> Float[Tensor, '*batch m']:
    """*batch n, n m -> *batch m  (primed: *batch n, n m -> *batch m)"""
    t0 = torch.matmul(x0, x1)  # matmul-broadcast: *batch[0] *batch[1] n, n m -> *batch[0] *batch[1] m
    return t0
