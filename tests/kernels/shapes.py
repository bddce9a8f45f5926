"""Monarch test shapes shared by the reference and the Triton tests.

(N, r, b_in, b_out, leading dims): r < b_in and r >= b_in, m != n, sizes off
the 16/32/64 tiles, row counts across several row tiles, N·r > 128 and > 256
(smaller row and column tiles), N·r > 512 (the widest tile, 1024), more
than 256 rows (weight gradients summed from split partials) and b_in, b_out >
64 (several column tiles, last so the gradcheck can leave it out).
"""

SHAPES = [
    (1, 3, 5, 7, (4,)),
    (1, 9, 4, 6, (2, 3)),
    (2, 2, 9, 5, (3, 2, 2)),
    (2, 7, 3, 11, (70,)),
    (4, 3, 5, 2, (5, 3)),
    (4, 8, 6, 10, (2, 2, 3)),
    (8, 1, 3, 4, (9,)),
    (8, 20, 3, 5, (33,)),
    (8, 40, 3, 5, (5,)),
    (2, 300, 3, 4, (3,)),
    (2, 3, 4, 5, (300,)),
    (4, 5, 70, 67, (3, 2)),
]
