"""Training: patch cache and split data (`dataset`), batched augmentation (`augment`),
the fold-honest loop (`loop`), metrics (`metrics`), fold orchestration (`fold`)."""
