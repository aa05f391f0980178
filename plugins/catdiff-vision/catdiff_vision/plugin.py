"""catdiff hook implementations of the catdiff-vision plugin (entry point ``catdiff: vision``).

Components are named by reference (``Lazy``): nothing heavy (torch, scikit-learn, torchvision,
torch-fidelity, matplotlib, PyYAML) is imported when the plugin is loaded or listed, only when
a component is used. The task descriptions repeat the classes' own (a test keeps them equal).
"""
from catdiff.hooks import Lazy, hookimpl

V = "catdiff_vision."


@hookimpl
def catdiff_tasks():
    return {
        "digits": Lazy(V + "digits:DigitsTask",
                       "8x8 handwritten digits (sklearn), 64 tokens of 17 grey levels; 1497 train / 300 test"),
        "digits-cond": Lazy(V + "digits:ConditionalDigitsTask",
                            "8x8 digits conditioned on the class label 0..9; 1497 train / 300 test"),
        "fashion-mnist": Lazy(V + "fashion:FashionTask", "Fashion-MNIST (Debian package) as 7x7 VQ tokens; "
                              "run `catdiff prepare fashion-mnist` once"),
        "fashion-mnist-cond": Lazy(V + "fashion:FashionCondTask", "Fashion-MNIST 7x7 VQ tokens conditioned on the "
                                   "class (guidance); `catdiff prepare fashion-mnist-cond`"),
        "image-folder": Lazy(V + "image_folder:ImageFolderTask", "any folder of images (--set images=DIR; "
                             "classes=true: sub-folders), small VQ or taming VQGAN tokens"),
        "image-ffhq": Lazy(V + "image_tasks:FFHQTask", "FFHQ 256x256 as 16x16 VQGAN tokens (1024 codes); "
                           "unconditional, 15/8/512, 200 steps"),
        "image-churches": Lazy(V + "image_tasks:ChurchesTask", "LSUN Churches 256x256 as 16x16 VQGAN tokens; "
                               "unconditional, 15/8/512, 200 steps"),
        "image-bedrooms": Lazy(V + "image_tasks:BedroomsTask", "LSUN Bedrooms 256x256 as 16x16 VQGAN tokens; "
                               "unconditional, 15/8/512, 200 steps"),
        "image-imagenet": Lazy(V + "image_tasks:ImageNetTask", "ImageNet 256x256 as 16x16 VQGAN tokens, 1000 classes "
                               "(AdaLN + guidance), 24/16/768, 50 steps"),
    }


@hookimpl
def catdiff_tokenizers():
    return {"grey-levels": Lazy(V + "grey_levels:GreyLevelTokenizer"), "vqgan": Lazy(V + "vqgan:load_vqgan"),
            "fashion-vq": Lazy(V + "vq_tokenizer:VQTokenizer")}


@hookimpl
def catdiff_metrics():
    return {"digits-fid": Lazy(V + "fidelity:digits_fid"), "fashion-classifier": Lazy(V + "fashion_classifier:metrics"),
            "image-fidelity": Lazy(V + "image_metrics:image_metrics")}
