// Creates ALLOW ACLs on a (SASL) broker with Kafka's own Admin client: the fetched jars hold no
// kafka-acls command and aiokafka has no CreateAcls. Run as a single-file source program:
//   java -cp '<libs>/*' Acls.java <bootstrap> <type,pattern,name,principal,operation>...
// The client's security properties (with the admin password) come on stdin, never on argv.
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

public class Acls {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.load(System.in);
        props.put("bootstrap.servers", args[0]);
        List<AclBinding> bindings = new ArrayList<>();
        for (int i = 1; i < args.length; i++) {
            String[] f = args[i].split(",", 5);
            bindings.add(new AclBinding(
                new ResourcePattern(
                    ResourceType.fromString(f[0]), f[2], PatternType.fromString(f[1])),
                new AccessControlEntry(
                    f[3], "*", AclOperation.fromString(f[4]), AclPermissionType.ALLOW)));
        }
        try (Admin admin = Admin.create(props)) {
            admin.createAcls(bindings).all().get();
        }
        System.out.println("created " + bindings.size() + " ACLs");
    }
}
