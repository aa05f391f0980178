"""catdiff hook implementations of the catdiff-vision plugin (entry point ``catdiff: vision``).

Components are named by reference (``Lazy``): nothing heavy (torch, scikit-learn, torchvision,
torch-fidelity, matplotlib, PyYAML) is imported when the plugin is loaded or listed, only when
a component is used; ``catdiff list`` reads a task's description from its class's source.
"""
from catdiff.api.hooks import Lazy, hookimpl

V = "catdiff_vision."


@hookimpl
def catdiff_tasks():
    return {name: Lazy(V + ref) for name, ref in {
        "digits": "digits:DigitsTask", "digits-cond": "digits:ConditionalDigitsTask",
        "fashion-mnist": "fashion:FashionTask", "fashion-mnist-cond": "fashion:FashionCondTask",
        "image-folder": "image_folder:ImageFolderTask",
        "image-ffhq": "image_tasks:FFHQTask", "image-churches": "image_tasks:ChurchesTask",
        "image-bedrooms": "image_tasks:BedroomsTask", "image-imagenet": "image_tasks:ImageNetTask",
    }.items()}


@hookimpl
def catdiff_tokenizers():
    return {"grey-levels": Lazy(V + "grey_levels:GreyLevelTokenizer"), "vqgan": Lazy(V + "vqgan:load_vqgan"),
            "fashion-vq": Lazy(V + "vq_tokenizer:VQTokenizer")}


@hookimpl
def catdiff_metrics():
    return {"digits-fid": Lazy(V + "fidelity:digits_fid"), "fashion-classifier": Lazy(V + "fashion_classifier:metrics"),
            "image-fidelity": Lazy(V + "image_metrics:image_metrics")}
