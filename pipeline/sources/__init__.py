"""Loaders for each dataset's own layout; ``LOADERS`` maps a params ``format`` to one."""

from pipeline.sources.base import LoaderReport, RawItem
from pipeline.sources.baidu import iter_baidu
from pipeline.sources.ccp import iter_ccp
from pipeline.sources.eg1800 import iter_eg1800_original
from pipeline.sources.folder import iter_folder, iter_unlabelled
from pipeline.sources.portraitnet import iter_eg1800_portraitnet

LOADERS = {
    "eg1800_original": iter_eg1800_original,
    "eg1800_portraitnet": iter_eg1800_portraitnet,
    "baidu": iter_baidu,
    "ccp": iter_ccp,
    "folder": iter_folder,
    "unlabelled": iter_unlabelled,
}

__all__ = ["LOADERS", "LoaderReport", "RawItem"]
