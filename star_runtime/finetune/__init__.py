"""Block fine-tuning: teach a model Block-Attention (RAG data, block masks, training, RAG evaluation)."""
