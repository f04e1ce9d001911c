// Microphone capture: hands every 128-sample block of the first channel to the page, which batches
// 20 ms of it into one input_audio_buffer.append (PCM16 at the AudioContext's own rate).
class Capture extends AudioWorkletProcessor {
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel && channel.length) this.port.postMessage(channel.slice(0));
    return true;
  }
}
registerProcessor("emoslm-capture", Capture);
