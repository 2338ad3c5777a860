"""twinv2: TWIN-V2 life-cycle CTR modelling (Si et al., CIKM 2024)."""

__version__ = "0.1.0"
