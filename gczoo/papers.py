"""The papers gczoo implements: one table for how each is cited and what it reports.

Every place that names a paper -- the block registry (``gczoo.layers.ATTN_SPECS``), the zoo table
(``ZooModel.paper``), the pretrained cfgs' ``paper_ids``, the model cards' citations and the
complexity tests against the papers' tables -- looks it up here by its key. It sits at the bottom of
the package (it imports nothing from gczoo), so layers and models can read it.

``reported`` holds what a paper's own tables say about the configuration a zoo model reproduces,
keyed by that zoo model's name: its parameter count and its complexity next to the paper's own
ResNet-50 baseline, with what the paper's counter includes (papers count differently from timm's
convention, so the tests compare ratios, not absolute numbers).
"""
import dataclasses
from typing import Dict, Mapping, Optional

__all__ = ['Paper', 'ReportedFigures', 'PAPERS', 'get_paper', 'reported_figures']


@dataclasses.dataclass(frozen=True)
class ReportedFigures:
    """A paper's figures for one zoo model's configuration (1000 classes, 224x224).

    ``baseline_gflops`` / ``model_gflops`` are the numbers as printed for the paper's own ResNet-50
    and for the model (the papers say "GFLOPs" but all count multiply-adds); ``counts`` says what the
    paper's counter includes, as far as its baseline figure tells; ``source`` is the table.
    """
    params_m: Optional[float] = None
    baseline_gflops: Optional[float] = None
    model_gflops: Optional[float] = None
    source: str = ''
    counts: str = ''

    @property
    def ratio(self) -> Optional[float]:
        """The model's complexity over the paper's own ResNet-50 (comparable across counters)."""
        if self.model_gflops is None or self.baseline_gflops is None:
            return None
        return self.model_gflops / self.baseline_gflops


@dataclasses.dataclass(frozen=True)
class Paper:
    """One paper: ``short`` is the one-line citation (authors, name, venue year)."""
    title: str
    short: str
    arxiv: str
    bibtex: str
    reported: Mapping[str, ReportedFigures] = dataclasses.field(default_factory=dict)

    @property
    def citation(self) -> str:
        """``'Cao et al., GCNet, ICCVW 2019 (arXiv:1904.11492)'``."""
        return f'{self.short} (arXiv:{self.arxiv})'

    @property
    def url(self) -> str:
        return f'https://arxiv.org/abs/{self.arxiv}'


PAPERS: Dict[str, Paper] = {
    'gcnet': Paper(
        'GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond',
        'Cao et al., GCNet, ICCVW 2019', '1904.11492',
        """@inproceedings{cao2019gcnet,
  title     = {GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond},
  author    = {Cao, Yue and Xu, Jiarui and Lin, Stephen and Wei, Fangyun and Hu, Han},
  booktitle = {IEEE/CVF International Conference on Computer Vision Workshops (ICCVW)},
  year      = {2019}
}""",
        reported={'resnet50_gc': ReportedFigures(
            28.08, 4.12, 4.13, 'ImageNet table: ResNet-50 baseline vs +GC (r16, c3-c5)',
            'multiply-adds of the PyTorch-style ResNet-50 (stride on the 3x3, as timm) with a module-hook '
            'counter (mmcv/ptflops style): conv+fc 4.089, + batch norm 0.022, + ReLU/pooling 0.010 = 4.12. '
            'Such counters hook modules, so the GC block\'s attention-pooling torch.matmul (0.003 G) is not '
            'in the paper\'s +0.01; we count it.')}),
    'nonlocal': Paper(
        'Non-local Neural Networks',
        'Wang et al., Non-local Neural Networks, CVPR 2018', '1711.07971',
        """@inproceedings{wang2018nonlocal,
  title     = {Non-local Neural Networks},
  author    = {Wang, Xiaolong and Girshick, Ross and Gupta, Abhinav and He, Kaiming},
  booktitle = {IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2018}
}"""),
    'senet': Paper(
        'Squeeze-and-Excitation Networks',
        'Hu et al., SENet, CVPR 2018', '1709.01507',
        """@inproceedings{hu2018senet,
  title     = {Squeeze-and-Excitation Networks},
  author    = {Hu, Jie and Shen, Li and Sun, Gang},
  booktitle = {IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2018}
}""",
        reported={'resnet50_se': ReportedFigures(
            28.09, 3.86, 3.87, 'Table 2 and Sec. 4: ResNet-50 ~3.86 vs SE-ResNet-50 ~3.87 ("0.26% relative increase")',
            'conv+fc multiply-adds of the original (Caffe) ResNet-50, whose downsampling bottlenecks put the '
            'stride on the first 1x1 conv: 3.858 G (test_complexity rebuilds that network and counts it). '
            'The 2-decimal rounding of 3.87 holds the SE overhead (0.0025 G) only to +-0.01 G.')}),
    'cbam': Paper(
        'CBAM: Convolutional Block Attention Module',
        'Woo et al., CBAM, ECCV 2018', '1807.06521',
        """@inproceedings{woo2018cbam,
  title     = {CBAM: Convolutional Block Attention Module},
  author    = {Woo, Sanghyun and Park, Jongchan and Lee, Joon-Young and Kweon, In So},
  booktitle = {European Conference on Computer Vision (ECCV)},
  year      = {2018}
}""",
        reported={'resnet50_cbam': ReportedFigures(
            28.09, 3.858, 3.864, 'Table 4 (ImageNet-1K): ResNet50 3.858, +SE 3.860, +CBAM 3.864 GFLOPs',
            'conv+fc multiply-adds of the original ResNet-50 (stride on the first 1x1): exactly 3.858 G.')}),
    'bam': Paper(
        'BAM: Bottleneck Attention Module',
        'Park et al., BAM, BMVC 2018', '1807.06514',
        """@inproceedings{park2018bam,
  title     = {BAM: Bottleneck Attention Module},
  author    = {Park, Jongchan and Woo, Sanghyun and Lee, Joon-Young and Kweon, In So},
  booktitle = {British Machine Vision Conference (BMVC)},
  year      = {2018}
}""",
        reported={'resnet50_bam': ReportedFigures(
            25.92, 3.86, 3.94, 'ImageNet-1K table: ResNet50 3.86 vs ResNet50+BAM 3.94 GFLOPs',
            'conv+fc multiply-adds of the original ResNet-50 (stride on the first 1x1), as in CBAM (same '
            'authors); BAM\'s dilated 3x3 convs of the spatial branch (0.082 G) are almost all of the +0.08.')}),
    'ccnet': Paper(
        'CCNet: Criss-Cross Attention for Semantic Segmentation',
        'Huang et al., CCNet, ICCV 2019', '1811.11721',
        """@inproceedings{huang2019ccnet,
  title     = {CCNet: Criss-Cross Attention for Semantic Segmentation},
  author    = {Huang, Zilong and Wang, Xinggang and Huang, Lichao and Huang, Chang and Wei, Yunchao and Liu, Wenyu},
  booktitle = {IEEE/CVF International Conference on Computer Vision (ICCV)},
  year      = {2019}
}"""),
    'sagan': Paper(
        'Self-Attention Generative Adversarial Networks',
        'Zhang et al., SAGAN, ICML 2019', '1805.08318',
        """@inproceedings{zhang2019sagan,
  title     = {Self-Attention Generative Adversarial Networks},
  author    = {Zhang, Han and Goodfellow, Ian and Metaxas, Dimitris and Odena, Augustus},
  booktitle = {International Conference on Machine Learning (ICML)},
  year      = {2019}
}"""),
    # the backbone every zoo model is built on: cited by every model card
    'resnet': Paper(
        'Deep Residual Learning for Image Recognition',
        'He et al., ResNet, CVPR 2016', '1512.03385',
        """@inproceedings{he2016resnet,
  title     = {Deep Residual Learning for Image Recognition},
  author    = {He, Kaiming and Zhang, Xiangyu and Ren, Shaoqing and Sun, Jian},
  booktitle = {IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2016}
}"""),
}


def get_paper(key: str) -> Paper:
    """The paper under ``key``; an unknown key is a ``ValueError`` listing the known ones."""
    try:
        return PAPERS[key]
    except (KeyError, TypeError):
        raise ValueError(f'unknown paper {key!r}; known papers: {", ".join(PAPERS)}') from None


def reported_figures(model_name: str, paper: Optional[str] = None) -> Optional[ReportedFigures]:
    """What a paper reports for the configuration the zoo model ``model_name`` reproduces (None if no
    paper does); ``paper`` limits the search to that paper."""
    papers = [get_paper(paper)] if paper is not None else PAPERS.values()
    return next((p.reported[model_name] for p in papers if model_name in p.reported), None)
