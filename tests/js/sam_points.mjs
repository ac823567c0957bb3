// Run an exported SAM folder through transformers.js (SamModel + AutoProcessor) for point prompts, as a user would,
// with local files only. Prints one JSON object: the processor's pixel_values, the model's iou_scores and
// pred_masks (low-resolution logits) and the post-processed masks at the image's size.
//
//   node sam_points.mjs <models folder> <model folder name> <image file> <input_points JSON> <input_labels JSON> [dtype]
import { AutoProcessor, RawImage, SamModel, env } from '@huggingface/transformers';

const [root, name, imagePath, points, labels, dtype = 'fp32'] = process.argv.slice(2);
env.allowRemoteModels = false;
env.allowLocalModels = true;
env.localModelPath = root;

const model = await SamModel.from_pretrained(name, { dtype, device: 'cpu' });
const processor = await AutoProcessor.from_pretrained(name);
const image = await RawImage.read(imagePath);
const inputs = await processor(image, { input_points: JSON.parse(points), input_labels: JSON.parse(labels) });
const outputs = await model(inputs);
const masks = await processor.post_process_masks(outputs.pred_masks, inputs.original_sizes, inputs.reshaped_input_sizes);

const plain = (tensor) => ({ dims: tensor.dims, data: Array.from(tensor.data, Number) });
console.log(JSON.stringify({
  pixel_values: plain(inputs.pixel_values),
  original_sizes: inputs.original_sizes,
  reshaped_input_sizes: inputs.reshaped_input_sizes,
  iou_scores: plain(outputs.iou_scores),
  pred_masks: plain(outputs.pred_masks),
  masks: plain(masks[0]),
}));
