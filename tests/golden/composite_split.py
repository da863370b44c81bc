def einplan_kernel(
    x0: Float[Tensor, 'b _'],
    x1: Float[Tensor, 'h d e'],
) -> Float[Tensor, 'b h e']:
    """b (h d), h d e -> b h e  (primed: b (h d), h d e -> b h e)"""
    a0 = x0.reshape(5, 3, 4)  # prepare: b (h d) -> b h d
    t0 = torch.matmul(a0.permute(1, 0, 2), x1)  # matmul-broadcast: b h d, h d e -> h b e
    return t0.permute(1, 0, 2)
