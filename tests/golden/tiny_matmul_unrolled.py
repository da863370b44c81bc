def einplan_kernel(
    x0: Float[Tensor, 'b i j'],
    x1: Float[Tensor, 'b j k'],
) -> Float[Tensor, 'b i k']:
    """b i j, b j k -> b i k  (primed: b i j, b j k -> b i k)"""
    v0 = x0.permute(2, 1, 0).contiguous()  # unrolled: lay j i b out, b last
    v1 = x1.permute(1, 2, 0).contiguous()  # unrolled: lay j k b out, b last
    t2 = v0[0, :, None] * v1[0]  # unrolled: term j=0
    t2.addcmul_(v0[1, :, None], v1[1])  # unrolled: term j=1
    return t2.permute(2, 0, 1)
