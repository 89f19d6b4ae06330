import torch


def beam_search(model, input_ids, num_beams, max_new_tokens, length_penalty=1.0, early_stopping=False,
                eos_token_id=None):
    nb = num_beams
    results = []
    for prompt in input_ids:
        running = prompt[None].repeat(nb, 1)
        scores = torch.full((nb,), float("-inf"))
        scores[0] = 0.0
        pool = []  # (normalised score, ids)
        done = False
        for n_gen in range(1, max_new_tokens + 1):
            logp = torch.log_softmax(model(running)[:, -1].float(), dim=-1)
            v = logp.shape[-1]
            cand, idx = torch.topk((scores[:, None] + logp).flatten(), 2 * nb)
            new_running, new_scores = [], []
            for s, i in zip(cand.tolist(), idx.tolist(), strict=True):
                beam, tok = divmod(i, v)
                seq = torch.cat([running[beam], torch.tensor([tok])])
                ends = tok == eos_token_id or n_gen == max_new_tokens
                if ends:
                    if not done:  # any ending candidate joins, not only the first nb
                        pool.append((s / n_gen ** length_penalty, seq))
                        pool = sorted(pool, key=lambda p: -p[0])[:nb]
                elif len(new_running) < nb:
                    new_running.append(seq)
                    new_scores.append(s)
            while len(new_running) < nb:  # fewer than nb unfinished candidates (only at the last step)
                new_running.append(seq)
                new_scores.append(float("-inf"))
            running, scores = torch.stack(new_running), torch.tensor(new_scores)
            if len(pool) == nb:
                if early_stopping or scores[0].item() / n_gen ** length_penalty <= pool[-1][0]:
                    done = True
            if done:
                break
        results.append(pool[0])
    longest = max(len(seq) for _, seq in results)
    pad = eos_token_id if eos_token_id is not None else 0
    seqs = torch.full((len(results), longest), pad, dtype=torch.long)
    for b, (_, seq) in enumerate(results):
        seqs[b, :len(seq)] = seq
    return seqs, torch.tensor([s for s, _ in results], dtype=torch.float32)
