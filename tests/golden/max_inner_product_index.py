def einplan_kernel(
    x0: Float[Tensor, 'm d'],
    x1: Float[Tensor, 'n d'],
) -> tuple[Int64[Tensor, ''], Int64[Tensor, '']]:
    """m d, n d -> | argmax m n  (primed: m d, n d -> | argmax m n)"""
    buf0 = torch.empty((131, 2000), dtype=torch.float32, device=x0.device)  # chunk buffer, 1.02e+03 KiB
    grad = torch.is_grad_enabled() and (x0.requires_grad or x1.requires_grad)  # out= buffers do not carry gradients
    acc1 = torch.full((), float('-inf'), dtype=torch.float32, device=x0.device)  # running max
    idx2 = torch.zeros((), dtype=torch.int64, device=x0.device)  # its flat index
    for i in range(0, 1965, 131):  # chunked-reduction: 131 of 2000 along m
        c6 = x0[i:i + 131]  # chunk of m
        s7 = torch.matmul(c6, x1.mT, out=None if grad else buf0)  # matmul-broadcast: m d, n d -> m n for this chunk
        p8 = s7.reshape(-1).max(-1)  # max of this chunk and where
        take9 = (p8.values > acc1) | ((p8.values != p8.values) & (acc1 == acc1))  # strictly better (ties keep the first; NaN wins)
        acc1 = torch.where(take9, p8.values, acc1)
        idx2 = torch.where(take9, p8.indices + (i * 2000), idx2)  # chunk offset
    for i in range(1965, 2000, 35):  # last, shorter chunk: 35 of 2000 along m
        c10 = x0[i:i + 35]  # chunk of m
        s11 = torch.matmul(c10, x1.mT, out=None if grad else buf0[:35])  # matmul-broadcast: m d, n d -> m n for this chunk
        p12 = s11.reshape(-1).max(-1)  # max of this chunk and where
        take13 = (p12.values > acc1) | ((p12.values != p12.values) & (acc1 == acc1))  # strictly better (ties keep the first; NaN wins)
        acc1 = torch.where(take13, p12.values, acc1)
        idx2 = torch.where(take13, p12.indices + (i * 2000), idx2)  # chunk offset
    t3 = torch.unravel_index(idx2, (2000, 2000))  # one index tensor per axis
    t4 = t3[0]  # index along m
    t5 = t3[1]  # index along n
    return t4, t5
