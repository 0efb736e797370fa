"""torchvision's equivalent of DeiT's training transforms, timed on one core, for
bench/data-vs-torchvision.sh: PIL decode (torchvision's default loader), RandomResizedCrop(224,
bicubic), horizontal flip, RandAugment (2 ops, magnitude 9: torchvision's op set, the nearest to
timm's rand-m9-mstd0.5-inc1), ToTensor, ImageNet normalization, RandomErasing(0.25, random pixels).
--randaugment timm (the default) warps as timm does for DeiT: bicubic, filled with the ImageNet mean
(timm's transforms_imagenet_train passes the train interpolation and img_mean to RandAugment);
--randaugment default keeps torchvision's own RandAugment defaults (nearest, black fill), less work.
Prints one JSON line: images, seconds, imagesPerSec, cpuSeconds, imagesPerCpuSecond."""
import argparse, json, os, time

import torch
from torchvision import datasets, transforms
from torchvision.transforms import InterpolationMode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

parser = argparse.ArgumentParser()
parser.add_argument('--data', required=True)
parser.add_argument('--images', type=int, default=1024)
parser.add_argument('--randaugment', choices=['timm', 'default'], default='timm')
args = parser.parse_args()
torch.set_num_threads(1)

if args.randaugment == 'timm':
    rand_augment = transforms.RandAugment(num_ops=2, magnitude=9, interpolation=InterpolationMode.BICUBIC,
                                          fill=[min(255, round(255 * m)) for m in IMAGENET_MEAN])
else:
    rand_augment = transforms.RandAugment(num_ops=2, magnitude=9)
pipeline = transforms.Compose([
    transforms.RandomResizedCrop(224, interpolation=InterpolationMode.BICUBIC),
    transforms.RandomHorizontalFlip(),
    rand_augment,
    transforms.ToTensor(),
    transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    transforms.RandomErasing(p=0.25, value='random'),
])
folder = datasets.ImageFolder(os.path.join(args.data, 'train'), transform=pipeline)
warmup = 32
for i in range(warmup):
    folder[i % len(folder)]
start = time.perf_counter()
cpu_start = time.process_time()
for i in range(args.images):
    folder[(warmup + i) % len(folder)]
seconds = time.perf_counter() - start
cpu_seconds = time.process_time() - cpu_start
print(json.dumps({'images': args.images, 'seconds': seconds, 'imagesPerSec': args.images / seconds, 'cpuSeconds': cpu_seconds,
                  'imagesPerCpuSecond': args.images / cpu_seconds, 'randaugment': args.randaugment,
                  'torchvision': __import__('torchvision').__version__}))
