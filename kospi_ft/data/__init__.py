"""The pipeline's data: KRX market bars (contract, simulator, snapshots, regimes), the stock universe, the Stage 1
hub datasets, and the Stage 2/3 synthetic SFT records and DPO pairs built from them."""
