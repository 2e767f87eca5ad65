"""Stand-ins for SAM's prompt encoder and mask decoder with SAM's interfaces and masks like a trained SAM's (discs
around each prompt), so that segment_anything's own generator and ours have real filtering and NMS work to compare."""

import torch

from sas_ray.models.sam import load_sam


class DiskPrompts(torch.nn.Module):
    """Stands in for SAM's prompt encoder: the point's input-frame coordinates travel in the first two channels."""

    def __init__(self, sam):
        super().__init__()
        self.real = sam.prompt_encoder

    def get_dense_pe(self):
        return self.real.get_dense_pe()

    def forward(self, points, boxes, masks):
        coords, _ = points
        sparse = torch.zeros(len(coords), 2, self.real.embed_dim, dtype=torch.float32, device=coords.device)
        sparse[:, 0, :2] = coords[:, 0].float()
        dense = torch.zeros(1, self.real.embed_dim, *self.real.image_embedding_size).expand(len(coords), -1, -1, -1)
        return sparse, dense


class DiskDecoder(torch.nn.Module):
    """Stands in for SAM's mask decoder with masks a real SAM would give: three nested discs around the prompt
    (radius 6, 11, 19 input pixels) with a ripple, so stability, IoU filtering and box NMS all have work to do."""

    def __init__(self, img_size: int, low_res: int = 16):
        super().__init__()
        self.img_size, self.low_res = img_size, low_res

    def forward(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                multimask_output):
        xy = sparse_prompt_embeddings[:, 0, :2]  # [P, 2] input pixels
        cell = (torch.arange(self.low_res, dtype=torch.float32) + 0.5) * self.img_size / self.low_res
        dx = cell[None, None, :] - xy[:, 0, None, None]
        dy = cell[None, :, None] - xy[:, 1, None, None]
        dist = (dx ** 2 + dy ** 2).sqrt()  # [P, low, low]
        radii = torch.tensor([6.0, 11.0, 19.0])
        ripple = 1.5 * torch.sin(0.9 * cell)[None, :, None] * torch.cos(0.7 * cell)[None, None, :]
        logits = 6.0 * (radii[None, :, None, None] - dist[:, None]) + ripple[:, None]
        iou = 0.55 + 0.4 * torch.frac(0.37 * xy[:, :1] + 0.13 * torch.arange(3.0)[None] + 0.071 * xy[:, 1:])
        return logits, iou


def disk_sam():
    sam = load_sam(tiny=True, seed=0)
    sam.prompt_encoder = DiskPrompts(sam)
    sam.mask_decoder = DiskDecoder(sam.image_encoder.img_size)
    return sam
