"""The tiny model the GPU handlers serve (no download, no package): a seeded transformer
encoder, about 45 MB of float32 weights. The same seed gives the same weights in every
process, so answers can be compared across refreshes."""
import torch

VOCAB, WIDTH = 32000, 256


def build(device: str) -> torch.nn.ModuleDict:
    torch.manual_seed(0)
    return torch.nn.ModuleDict({
        "embed": torch.nn.Embedding(VOCAB, WIDTH),
        "encoder": torch.nn.TransformerEncoder(
            torch.nn.TransformerEncoderLayer(WIDTH, nhead=4, dim_feedforward=1024,
                                             batch_first=True), num_layers=4,
            enable_nested_tensor=False),
    }).to(device).eval()


def embed(model: torch.nn.ModuleDict, text: str, device: str) -> list:
    ids = torch.tensor([[ord(c) % VOCAB for c in text[:512]] or [0]], device=device)
    with torch.inference_mode():
        hidden = model["encoder"](model["embed"](ids))
    return hidden.mean(dim=1)[0].float().cpu().tolist()
