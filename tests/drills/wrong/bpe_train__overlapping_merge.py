from collections import Counter


def train_bpe(chunks, num_merges):
    words = [list(c) for c in chunks]
    freqs = list(chunks.values())
    vocab = [bytes([b]) for b in range(256)]
    merges = []
    for _ in range(num_merges):
        counts = Counter()
        for w, f in zip(words, freqs, strict=True):
            for pair in zip(w, w[1:], strict=False):
                counts[pair] += f
        if not counts:
            break
        a, b = min(counts, key=lambda p: (-counts[p], p))
        new = len(vocab)
        vocab.append(vocab[a] + vocab[b])
        merges.append((vocab[a], vocab[b]))
        for i, w in enumerate(words):  # merges right to left: "aaa" -> [a, aa] instead of [aa, a]
            out = []
            j = len(w) - 1
            while j >= 0:
                if j >= 1 and w[j - 1] == a and w[j] == b:
                    out.append(new)
                    j -= 2
                else:
                    out.append(w[j])
                    j -= 1
            words[i] = out[::-1]
    return merges
