"""catdiff hook implementations of the catdiff-vision plugin (entry point ``catdiff: vision``).

Heavy imports (scikit-learn, torchvision, torch-fidelity, matplotlib) happen only when a
component is used, never when the plugin is loaded.
"""
from catdiff.hooks import hookimpl


@hookimpl
def catdiff_tasks():
    from .digits import ConditionalDigitsTask, DigitsTask

    return {"digits": DigitsTask, "digits-cond": ConditionalDigitsTask}


@hookimpl
def catdiff_tokenizers():
    from .grey_levels import GreyLevelTokenizer

    return {"grey-levels": GreyLevelTokenizer}


@hookimpl
def catdiff_metrics():
    from .fidelity import digits_fid

    return {"digits-fid": digits_fid}
