"""catdiff hook implementations of the catdiff-vision plugin (entry point ``catdiff: vision``).

Heavy imports (scikit-learn, torchvision, torch-fidelity, matplotlib, PyYAML) happen only when
a component is used, never when the plugin is loaded.
"""
from catdiff.hooks import hookimpl


@hookimpl
def catdiff_tasks():
    from .digits import ConditionalDigitsTask, DigitsTask
    from .fashion import FashionCondTask, FashionTask
    from .image_folder import ImageFolderTask
    from .image_tasks import BedroomsTask, ChurchesTask, FFHQTask, ImageNetTask

    tasks = {"digits": DigitsTask, "digits-cond": ConditionalDigitsTask,
             "fashion-mnist": FashionTask, "fashion-mnist-cond": FashionCondTask, "image-folder": ImageFolderTask}
    tasks.update({cls.name: cls for cls in (FFHQTask, ChurchesTask, BedroomsTask, ImageNetTask)})
    return tasks


@hookimpl
def catdiff_tokenizers():
    from .grey_levels import GreyLevelTokenizer
    from .vq_tokenizer import VQTokenizer
    from .vqgan import load_vqgan

    return {"grey-levels": GreyLevelTokenizer, "vqgan": load_vqgan, "fashion-vq": VQTokenizer}


@hookimpl
def catdiff_metrics():
    from .fashion_classifier import metrics as fashion_metrics
    from .fidelity import digits_fid
    from .image_metrics import image_metrics

    return {"digits-fid": digits_fid, "fashion-classifier": fashion_metrics, "image-fidelity": image_metrics}
