// A producer outside Python, on the kafka-clients jar the setup downloads: reads
// "codec<TAB>topic<TAB>key<TAB>value" lines from stdin and sends each with a producer of that
// compression codec (acks=all, idempotent, batched), then flushes. Exit code 1 on any failure.
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.atomic.AtomicLong;

import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.StringSerializer;

public class HapProducer {
    static KafkaProducer<String, String> open(String bootstrap, String codec) {
        Properties props = new Properties();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, codec);
        props.put(ProducerConfig.ACKS_CONFIG, "all");
        props.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
        props.put(ProducerConfig.LINGER_MS_CONFIG, "50");
        props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        return new KafkaProducer<>(props);
    }

    public static void main(String[] args) throws Exception {
        Map<String, KafkaProducer<String, String>> producers = new LinkedHashMap<>();
        AtomicLong failed = new AtomicLong();
        long sent = 0;
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        for (String line; (line = in.readLine()) != null; ) {
            String[] f = line.split("\t", 4);
            producers.computeIfAbsent(f[0], codec -> open(args[0], codec))
                .send(new ProducerRecord<>(f[1], f[2], f[3]), (meta, exc) -> {
                    if (exc != null) {
                        failed.incrementAndGet();
                        System.err.println("send failed: " + exc);
                    }
                });
            sent++;
        }
        for (KafkaProducer<String, String> p : producers.values()) {
            p.flush();
            p.close();
        }
        System.out.println("sent " + sent + " failed " + failed.get());
        System.exit(failed.get() == 0 ? 0 : 1);
    }
}
