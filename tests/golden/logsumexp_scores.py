def einplan_kernel(
    x0: Float[Tensor, 'q d'],
    x1: Float[Tensor, 'k d'],
) -> Float[Tensor, 'q']:
    """q d, k d -> q | logsumexp k  (primed: q d, k d -> q | logsumexp k)"""
    buf0 = torch.empty((43, 3000), dtype=torch.float32, device=x0.device)  # chunk buffer, 504 KiB
    grad = torch.is_grad_enabled() and (x0.requires_grad or x1.requires_grad)  # out= buffers do not carry gradients
    r1 = torch.empty((2000,), dtype=torch.float32, device=x0.device)  # result, filled chunk by chunk
    for i in range(0, 1978, 43):  # chunked-reduction: 43 of 2000 along q
        c2 = x0[i:i + 43]  # chunk of q
        s3 = torch.matmul(c2, x1.mT, out=None if grad else buf0)  # matmul-broadcast: q d, k d -> q k for this chunk
        t4 = torch.logsumexp(s3, 1)  # reduce: logsumexp k
        r1[i:i + 43] = t4  # write rows of q
    for i in range(1978, 2000, 22):  # last, shorter chunk: 22 of 2000 along q
        c5 = x0[i:i + 22]  # chunk of q
        s6 = torch.matmul(c5, x1.mT, out=None if grad else buf0[:22])  # matmul-broadcast: q d, k d -> q k for this chunk
        t7 = torch.logsumexp(s6, 1)  # reduce: logsumexp k
        r1[i:i + 22] = t7  # write rows of q
    return r1
