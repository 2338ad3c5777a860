"""CTR models: TWIN-V2's cluster-aware target attention and the baselines, all in one frame.

Shape glossary (every model unpacks its dims at the top of `forward` and comments each reshape):

    B  batch (samples)                 L  sequence length given to a long-term module (raw or clusters)
    T  raw history length              C  clusters of a user (TWIN-V2's sequence, C <= L)
    K  top-k kept by a GSU (100)       H  attention heads (4)
    D  embedding dim of an item        d  per-head key/value dim (dk)
    J  cross features per behaviour    E  dim of one cross-feature embedding (8, paper A.2)
    I  item rows in the vocabulary     U  unique items in a batch
"""
